//! SMBIOS: the OEM strings (structure type 11) that carry a script as
//! `pvagent:script=<script>` (QEMU `-smbios type=11,value=…`, libvirt
//! `<sysinfo type='smbios'><oemStrings>`). Pure logic over bytes the
//! firmware left in memory or fw_cfg handed over: untrusted input, walked
//! with bounds checks only (tested on the host).

/// The prefix of the OEM string that holds a script.
pub const SCRIPT_PREFIX: &[u8] = b"pvagent:script=";
/// Structure type of the OEM strings.
const OEM_STRINGS: u8 = 11;
/// Structure type that ends the table.
const END_OF_TABLE: u8 = 127;

/// Where an entry point says the structure table is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Table {
    pub address: u64,
    /// Its length (SMBIOS 2: exact; SMBIOS 3: a maximum).
    pub len: u32,
}

/// Reads an entry point at the start of `bytes`: SMBIOS 3 (`_SM3_`, 24
/// bytes) or 2.1 (`_SM_` … `_DMI_`, 31 bytes), checksums checked.
pub fn entry_point(bytes: &[u8]) -> Option<Table> {
    let sum = |b: &[u8]| b.iter().fold(0u8, |s, &x| s.wrapping_add(x));
    if bytes.starts_with(b"_SM3_") {
        let len = usize::from(*bytes.get(6)?);
        let ep = bytes.get(..len.max(24))?;
        if sum(ep) != 0 {
            return None;
        }
        let max = u32::from_le_bytes(ep.get(12..16)?.try_into().ok()?);
        let address = u64::from_le_bytes(ep.get(16..24)?.try_into().ok()?);
        return Some(Table { address, len: max });
    }
    if bytes.starts_with(b"_SM_") {
        let len = usize::from(*bytes.get(5)?);
        let ep = bytes.get(..len.max(31))?;
        let dmi = ep.get(16..31)?;
        if sum(ep.get(..len)?) != 0 || !dmi.starts_with(b"_DMI_") || sum(dmi) != 0 {
            return None;
        }
        let len = u32::from(u16::from_le_bytes(ep.get(22..24)?.try_into().ok()?));
        let address = u64::from(u32::from_le_bytes(ep.get(24..28)?.try_into().ok()?));
        return Some(Table { address, len });
    }
    None
}

/// Searches the legacy BIOS area (0xf0000–0xfffff, given as `area`) for an
/// entry point on a 16-byte boundary, SMBIOS 3 first.
pub fn find_entry_point(area: &[u8]) -> Option<Table> {
    let (chunks, _) = area.as_chunks::<16>();
    let at = |prefix: &[u8]| {
        chunks.iter().enumerate().find_map(|(i, c)| c.starts_with(prefix).then(|| area.get(i * 16..)).flatten())
    };
    at(b"_SM3_").and_then(entry_point).or_else(|| at(b"_SM_").and_then(entry_point))
}

/// Calls `f` with every OEM string of the structure table `table`.
pub fn for_each_oem_string<'a>(table: &'a [u8], mut f: impl FnMut(&'a [u8])) {
    let mut at = 0;
    while let (Some(&kind), Some(&len)) = (table.get(at), table.get(at + 1)) {
        let len = usize::from(len);
        if len < 4 {
            return;
        }
        let strings_at = at + len;
        let Some(strings) = table.get(strings_at..) else {
            return;
        };
        // The string set ends with a double NUL (an empty set with two NULs).
        let Some(end) = strings.windows(2).position(|w| w == [0, 0]) else {
            return;
        };
        if kind == OEM_STRINGS {
            let set = strings.get(..end).unwrap_or_default();
            for s in set.split(|&b| b == 0) {
                if !s.is_empty() {
                    f(s);
                }
            }
        }
        if kind == END_OF_TABLE {
            return;
        }
        at = strings_at + end + 2;
    }
}

/// The script in the table's first OEM string `pvagent:script=<script>`.
pub fn script(table: &[u8]) -> Option<&[u8]> {
    let mut found = None;
    for_each_oem_string(table, |s| {
        if found.is_none() {
            found = s.strip_prefix(SCRIPT_PREFIX);
        }
    });
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::vec::Vec;

    fn structure(kind: u8, formatted: &[u8], strings: &[&[u8]]) -> Vec<u8> {
        let mut s = std::vec![kind, 4 + formatted.len() as u8, 0, 0];
        s.extend_from_slice(formatted);
        for string in strings {
            s.extend_from_slice(string);
            s.push(0);
        }
        if strings.is_empty() {
            s.push(0);
        }
        s.push(0);
        s
    }

    fn table() -> Vec<u8> {
        let mut t = structure(1, &[1, 2, 3, 4], &[b"QEMU", b"Standard PC"]);
        t.extend(structure(
            11,
            &[3],
            &[b"other", b"pvagent:script=pvpanic.panicked; sleep:1s", b"pvagent:script=ignored"],
        ));
        t.extend(structure(127, &[], &[]));
        t
    }

    #[test]
    fn finds_the_script_in_oem_strings() {
        let t = table();
        assert_eq!(script(&t), Some(&b"pvpanic.panicked; sleep:1s"[..]));
        let mut all = Vec::new();
        for_each_oem_string(&t, |s| all.push(s.to_vec()));
        assert_eq!(all.len(), 3);
        assert_eq!(script(&structure(11, &[1], &[b"nothing"])), None);
        // An empty script is a script (blank: the agent says so).
        assert_eq!(script(&structure(11, &[1], &[b"pvagent:script="])), Some(&b""[..]));
    }

    #[test]
    fn malformed_tables_end_the_walk() {
        let t = table();
        for cut in 0..t.len() {
            let _ = script(&t[..cut]);
        }
        assert_eq!(script(&[11, 2, 0, 0, b'x']), None);
        assert_eq!(script(&[]), None);
        // A string set without its double NUL: nothing.
        assert_eq!(script(&[11, 5, 0, 0, 1, b'p', b'v']), None);
    }

    fn checksum(bytes: &mut [u8], at: usize, range: core::ops::Range<usize>) {
        bytes[at] = 0;
        let s = bytes[range].iter().fold(0u8, |s, &x| s.wrapping_add(x));
        bytes[at] = s.wrapping_neg();
    }

    #[test]
    fn entry_points() {
        let mut v3 = [0u8; 24];
        v3[..5].copy_from_slice(b"_SM3_");
        v3[6] = 24;
        v3[12..16].copy_from_slice(&0x1234u32.to_le_bytes());
        v3[16..24].copy_from_slice(&0x7fe0_0000u64.to_le_bytes());
        checksum(&mut v3, 5, 0..24);
        assert_eq!(entry_point(&v3), Some(Table { address: 0x7fe0_0000, len: 0x1234 }));
        let mut bad = v3;
        bad[20] ^= 1;
        assert_eq!(entry_point(&bad), None);

        let mut v2 = [0u8; 31];
        v2[..4].copy_from_slice(b"_SM_");
        v2[5] = 31;
        v2[16..21].copy_from_slice(b"_DMI_");
        v2[22..24].copy_from_slice(&0x1a0u16.to_le_bytes());
        v2[24..28].copy_from_slice(&0xf5a0u32.to_le_bytes());
        checksum(&mut v2, 21, 16..31);
        checksum(&mut v2, 4, 0..31);
        assert_eq!(entry_point(&v2), Some(Table { address: 0xf5a0, len: 0x1a0 }));

        let mut area = std::vec![0u8; 0x10000];
        area[0x5a40..0x5a40 + 31].copy_from_slice(&v2);
        assert_eq!(find_entry_point(&area), Some(Table { address: 0xf5a0, len: 0x1a0 }));
        area[0x100..0x100 + 24].copy_from_slice(&v3);
        assert_eq!(find_entry_point(&area).map(|t| t.address), Some(0x7fe0_0000));
        assert_eq!(find_entry_point(&area[..0x50]), None);
        assert_eq!(entry_point(b"_SM3_"), None);
    }
}
