//! The script baked into the agent's image (`cargo xtask image --script`):
//! the agent's area (`pvagent::baked`: the 16-byte magic, a u32 LE length,
//! [`CAPACITY`] bytes) found by its magic in a copy of the image (the ROM,
//! the UEFI loader) and filled in.

use anyhow::{Result, bail, ensure};

pub use pvagent::baked::{CAPACITY, MAGIC};

/// The area's size: magic, length, script.
pub const AREA_LEN: usize = MAGIC.len() + 4 + CAPACITY;

/// Offsets of the area's magic in `bytes`.
pub fn find(bytes: &[u8]) -> Vec<usize> {
    bytes.windows(MAGIC.len()).enumerate().filter(|(_, w)| *w == MAGIC).map(|(i, _)| i).collect()
}

/// Why `script` cannot be baked (`None`: it can): longer than the area.
pub fn problem(script: &str) -> Option<String> {
    (script.len() > CAPACITY).then(|| {
        format!(
            "the script is {} bytes, and a script baked into the image holds at most {CAPACITY} \
             (pvagent::baked::CAPACITY, the agent's limit of every script)",
            script.len()
        )
    })
}

/// Writes `script` into the one area of `bytes` (`what` names the copy in
/// errors); an empty script empties the area (no script).
pub fn patch(bytes: &mut [u8], script: &str, what: &str) -> Result<()> {
    if let Some(p) = problem(script) {
        bail!("{p}");
    }
    let at = match find(bytes)[..] {
        [at] => at,
        [] => bail!(
            "{what} has no baked-script area (no {:?}): is it an agent built before it had one?",
            "PVAGENT:BAKED:V1"
        ),
        ref many => bail!("{what} has {} baked-script areas, expected one", many.len()),
    };
    ensure!(at + AREA_LEN <= bytes.len(), "{what} ends inside its baked-script area");
    let area = &mut bytes[at + MAGIC.len()..at + AREA_LEN];
    area[..4].copy_from_slice(&(script.len() as u32).to_le_bytes());
    area[4..].fill(0);
    area[4..4 + script.len()].copy_from_slice(script.as_bytes());
    Ok(())
}

/// The script baked into `bytes` (`None`: the area is empty); an error
/// unless there is exactly one area.
pub fn read(bytes: &[u8]) -> Result<Option<String>> {
    let [at] = find(bytes)[..] else {
        bail!("not exactly one baked-script area");
    };
    ensure!(at + AREA_LEN <= bytes.len(), "the data ends inside the baked-script area");
    let len = u32::from_le_bytes(bytes[at + 16..at + 20].try_into()?) as usize;
    ensure!(len <= CAPACITY, "a corrupt area: length {len}");
    if len == 0 {
        return Ok(None);
    }
    Ok(Some(String::from_utf8_lossy(&bytes[at + 20..at + 20 + len]).into_owned()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Bytes with one empty area at `at`, as in a built image.
    pub(crate) fn with_area(len: usize, at: usize) -> Vec<u8> {
        let mut b = vec![0x90u8; len];
        b[at..at + 16].copy_from_slice(&MAGIC);
        b[at + 16..at + AREA_LEN].fill(0);
        b
    }

    #[test]
    fn patches_the_one_area() {
        let mut b = with_area(4000, 1000);
        assert_eq!(read(&b).unwrap(), None);
        patch(&mut b, "log:x; pvpanic.panicked", "the ROM").unwrap();
        assert_eq!(read(&b).unwrap().as_deref(), Some("log:x; pvpanic.panicked"));
        assert_eq!(&b[1016..1020], &23u32.to_le_bytes());
        assert!(b[..1000].iter().all(|&x| x == 0x90) && b[1000 + AREA_LEN..].iter().all(|&x| x == 0x90));
        // A shorter script leaves no tail of the longer one.
        patch(&mut b, "halt", "the ROM").unwrap();
        assert_eq!(read(&b).unwrap().as_deref(), Some("halt"));
        assert!(b[1020 + 4..1000 + AREA_LEN].iter().all(|&x| x == 0));
        patch(&mut b, "", "the ROM").unwrap();
        assert_eq!(read(&b).unwrap(), None);
        // The full capacity fits, one byte more is refused, naming the limit.
        let full = "x".repeat(CAPACITY);
        patch(&mut b, &full, "the ROM").unwrap();
        assert_eq!(read(&b).unwrap().unwrap().len(), 1024);
        let e = patch(&mut b, &format!("{full}y"), "the ROM").unwrap_err().to_string();
        assert!(e.contains("1025 bytes") && e.contains("at most 1024"), "{e}");
    }

    #[test]
    fn no_area_or_two_are_errors() {
        let mut none = vec![0u8; 3000];
        let e = patch(&mut none, "halt", "the UEFI loader").unwrap_err().to_string();
        assert!(e.starts_with("the UEFI loader has no baked-script area"), "{e}");
        let mut two = with_area(5000, 10);
        two[3000..3016].copy_from_slice(&MAGIC);
        let e = patch(&mut two, "halt", "the ROM").unwrap_err().to_string();
        assert!(e.contains("2 baked-script areas"), "{e}");
        let mut cut = with_area(3000, 1000);
        cut.truncate(1500);
        assert!(patch(&mut cut, "halt", "x").unwrap_err().to_string().contains("ends inside"));
    }

    /// The agent's own layout: what the agent reads is what is written.
    #[test]
    fn the_agents_layout() {
        assert_eq!(AREA_LEN, std::mem::size_of::<pvagent::baked::Area>());
        let mut b = with_area(AREA_LEN, 0);
        patch(&mut b, "pvpanic.panicked", "x").unwrap();
        let len = u32::from_le_bytes(b[16..20].try_into().unwrap());
        let script: &[u8; CAPACITY] = b[20..].try_into().unwrap();
        assert_eq!(pvagent::baked::read(len, script), Some((16, &b"pvpanic.panicked"[..])));
    }
}
