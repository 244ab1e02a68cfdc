//! A script baked into the image file by `cargo xtask image --script`: an
//! area in the image's read-only data that starts with a magic the xtask
//! finds in the file, then the script's length and bytes. Empty (length 0)
//! in a built image. For disk images, whose stacks (OpenStack's Glance,
//! KubeVirt's containerDisk) offer neither fw_cfg nor SMBIOS strings.

use crate::script::MAX_SCRIPT_LEN;

/// What the xtask looks for in the file (16 bytes), right before the
/// length (u32, little-endian) and the script's bytes.
pub const MAGIC: [u8; 16] = *b"PVAGENT:BAKED:V1";
/// The bytes a baked script may have.
pub const CAPACITY: usize = MAX_SCRIPT_LEN;

/// The area's layout (the xtask writes `len` and `script` in the file).
#[repr(C)]
pub struct Area {
    pub magic: [u8; 16],
    pub len: u32,
    pub script: [u8; CAPACITY],
}

/// The image's area: empty as built.
#[cfg(all(image, target_arch = "x86_64"))]
#[used]
#[unsafe(no_mangle)]
pub static PVAGENT_BAKED_SCRIPT: Area = Area { magic: MAGIC, len: 0, script: [0; CAPACITY] };

/// Reads an area's script: `None` when it holds none (length 0); the
/// length as written (more than [`CAPACITY`]: a corrupt area, which the
/// agent reports as a script too long) with the bytes that fit.
pub fn read(len: u32, script: &[u8; CAPACITY]) -> Option<(usize, &[u8])> {
    let len = usize::try_from(len).ok()?;
    (len > 0).then(|| (len, script.get(..len).unwrap_or(script)))
}

/// The baked script of this image, if any.
#[cfg(all(image, target_arch = "x86_64"))]
pub fn script() -> Option<(usize, &'static [u8])> {
    // A volatile read: the area is constant to the compiler, but the file
    // it is loaded from may have been written after the build.
    // SAFETY: reads an aligned field of a static.
    let len = unsafe { core::ptr::read_volatile(&raw const PVAGENT_BAKED_SCRIPT.len) };
    // SAFETY: the same static's script bytes, through a pointer the
    // compiler cannot see through (see above).
    let bytes: &'static [u8; CAPACITY] = unsafe { &*core::hint::black_box(&raw const PVAGENT_BAKED_SCRIPT.script) };
    read(len, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_xtask_writes() {
        let mut script = [0u8; CAPACITY];
        script[..16].copy_from_slice(b"pvpanic.panicked");
        assert_eq!(read(0, &script), None);
        assert_eq!(read(16, &script), Some((16, &b"pvpanic.panicked"[..])));
        let (len, bytes) = read(5000, &script).unwrap();
        assert_eq!((len, bytes.len()), (5000, CAPACITY));
        assert_eq!(core::mem::size_of::<Area>(), 16 + 4 + CAPACITY);
    }
}
