//! Plain-text rendering for the console lines a person reads (`virsh
//! console`, a serial log), without `core::fmt`: a format string in defmt's
//! placeholder syntax (the same string the structured log uses) and its
//! arguments. Pure logic, tested on the host against `format!`.
//!
//! Placeholders: `{}` or `{=TYPE}` (decimal, or the text itself), and with
//! `:#x` / `:#0Nx` (`0x`-prefixed hex, zero-padded to N characters in all,
//! as Rust's `{:#0Nx}`). `{{` and `}}` are literal braces.

/// One argument of a line.
#[derive(Clone, Copy)]
pub enum Arg<'a> {
    Str(&'a str),
    Unsigned(u64),
    Signed(i64),
    /// Something that renders itself (a script error, a PCI address).
    Text(&'a dyn Render),
}

/// A value that writes its own text.
pub trait Render {
    fn render(&self, out: &mut dyn FnMut(&[u8]));
}

impl<'a> From<&'a str> for Arg<'a> {
    fn from(s: &'a str) -> Self {
        Arg::Str(s)
    }
}

macro_rules! unsigned_args {
    ($($t:ty),*) => {$(
        impl From<$t> for Arg<'_> {
            fn from(v: $t) -> Self {
                Arg::Unsigned(v as u64)
            }
        }
    )*};
}
unsigned_args!(u8, u16, u32, u64, usize, bool);

impl From<i64> for Arg<'_> {
    fn from(v: i64) -> Self {
        Arg::Signed(v)
    }
}

impl<'a, T: Render> From<&'a T> for Arg<'a> {
    fn from(v: &'a T) -> Self {
        Arg::Text(v)
    }
}

/// Borrows a value as an argument (what [`crate::say!`]-style macros use,
/// so that plain values and `Render` types mix in one list).
pub trait ToArg {
    fn to_arg(&self) -> Arg<'_>;
}

impl ToArg for &str {
    fn to_arg(&self) -> Arg<'_> {
        Arg::Str(self)
    }
}

macro_rules! to_arg_via_from {
    ($($t:ty),*) => {$(
        impl ToArg for $t {
            fn to_arg(&self) -> Arg<'_> {
                Arg::from(*self)
            }
        }
    )*};
}
to_arg_via_from!(u8, u16, u32, u64, usize, bool, i64);

/// How one placeholder shows its number.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Style {
    Decimal,
    /// `0x`-prefixed lower-case hex, at least this many characters in all.
    Hex {
        width: usize,
    },
}

/// The style of a placeholder's inside (between the braces).
fn style(spec: &[u8]) -> Style {
    let Some(colon) = spec.iter().position(|&b| b == b':') else {
        return Style::Decimal;
    };
    let rest = spec.get(colon + 1..).unwrap_or_default();
    if rest.last() != Some(&b'x') {
        return Style::Decimal;
    }
    let digits = rest.iter().filter(|b| b.is_ascii_digit());
    let width = digits.fold(0usize, |n, &d| n.saturating_mul(10).saturating_add(usize::from(d - b'0')));
    Style::Hex { width }
}

// No indexing that can fail below (`get` instead): a failed index panics
// with a formatted message, which would pull `core::fmt` into the images.

fn write_unsigned(out: &mut dyn FnMut(&[u8]), value: u64, style: Style) {
    let mut buf = [0u8; 24];
    let mut at = buf.len();
    let (base, min_digits) = match style {
        Style::Decimal => (10, 1),
        Style::Hex { width } => (16, width.saturating_sub(2).max(1)),
    };
    let mut v = value;
    let mut digits = 0;
    while (v > 0 || digits < min_digits) && at > 2 {
        at -= 1;
        if let Some(slot) = buf.get_mut(at) {
            *slot = b"0123456789abcdef".get((v % base) as usize).copied().unwrap_or(b'?');
        }
        v /= base;
        digits += 1;
    }
    if let Style::Hex { .. } = style {
        at -= 2;
        if let Some(prefix) = buf.get_mut(at..at + 2) {
            prefix.copy_from_slice(b"0x");
        }
    }
    out(buf.get(at..).unwrap_or_default());
}

/// Writes `fmt` with its placeholders replaced by `args`, in order (a
/// placeholder without an argument is written as it is).
pub fn render(out: &mut dyn FnMut(&[u8]), fmt: &str, args: &[Arg<'_>]) {
    let bytes = fmt.as_bytes();
    let mut args = args.iter();
    let mut i = 0;
    let mut literal = 0;
    while let Some(&b) = bytes.get(i) {
        if (b == b'{' || b == b'}') && bytes.get(i + 1) == Some(&b) {
            out(bytes.get(literal..=i).unwrap_or_default());
            i += 2;
            literal = i;
            continue;
        }
        if b != b'{' {
            i += 1;
            continue;
        }
        let rest = bytes.get(i..).unwrap_or_default();
        let Some(len) = rest.iter().position(|&c| c == b'}') else {
            break;
        };
        let Some(arg) = args.next() else {
            break;
        };
        out(bytes.get(literal..i).unwrap_or_default());
        let spec = rest.get(1..len).unwrap_or_default();
        match *arg {
            Arg::Str(s) => out(s.as_bytes()),
            Arg::Unsigned(v) => write_unsigned(out, v, style(spec)),
            Arg::Signed(v) => {
                if v < 0 {
                    out(b"-");
                }
                write_unsigned(out, v.unsigned_abs(), style(spec));
            }
            Arg::Text(t) => t.render(out),
        }
        i += len + 1;
        literal = i;
    }
    out(bytes.get(literal..).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::string::String;
    use std::vec::Vec;

    fn text(fmt: &str, args: &[Arg<'_>]) -> String {
        let mut bytes = Vec::new();
        render(&mut |b| bytes.extend_from_slice(b), fmt, args);
        String::from_utf8(bytes).unwrap()
    }

    struct Named;
    impl Render for Named {
        fn render(&self, out: &mut dyn FnMut(&[u8])) {
            render(out, "00:{=u8}.{=u8}", &[Arg::from(3u8), Arg::from(0u8)]);
        }
    }

    #[test]
    fn renders_like_format() {
        assert_eq!(text("step {=usize}: {=str}", &[7usize.into(), "log:x".into()]), "step 7: log:x");
        for v in [0u64, 1, 0x10, 0xfebf_f000, u64::MAX] {
            assert_eq!(text("{=u64:#x}", &[v.into()]), std::format!("{v:#x}"));
            assert_eq!(text("{:#018x}", &[v.into()]), std::format!("{v:#018x}"));
            assert_eq!(text("{=u8:#04x}", &[(v as u8).into()]), std::format!("{:#04x}", v as u8));
            assert_eq!(text("{=u64}", &[v.into()]), std::format!("{v}"));
        }
        assert_eq!(text("{=i64}", &[(-22i64).into()]), "-22");
        assert_eq!(text("{=i64}", &[i64::MIN.into()]), std::format!("{}", i64::MIN));
        assert_eq!(text("at {}", &[Arg::Text(&Named)]), "at 00:3.0");
        assert_eq!(text("{{literal}} {}", &["x".into()]), "{literal} x");
        // More placeholders than arguments: the rest is written as it is.
        assert_eq!(text("a {} b {}", &["1".into()]), "a 1 b {}");
        assert_eq!(text("no args", &[]), "no args");
        assert_eq!(text("unclosed {", &["x".into()]), "unclosed {");
    }
}
