//! Text rules of the reference: C's `%g` and `%+g`, and CHECKLIST.md table cells.

use std::fmt::Write as _;

/// C's (and Python's) `%g`: 6 significant digits, the shorter of fixed and exponent form,
/// trailing zeros dropped. Non-finite values print as Python prints them: `nan`, `inf`, `-inf`.
pub fn g(x: f64) -> String {
    let mut s = String::with_capacity(16);
    push_g(&mut s, x, false);
    s
}

/// C's `%+g`: as [`g`], with a sign always (`+0.02`, `-0.00856543`, `+nan`).
pub fn g_signed(x: f64) -> String {
    let mut s = String::with_capacity(16);
    push_g(&mut s, x, true);
    s
}

/// [`g`] (`plus`: [`g_signed`]) appended to `out`, without allocating.
pub fn push_g(out: &mut String, x: f64, plus: bool) {
    const P: i32 = 6;
    if x.is_sign_negative() && !x.is_nan() {
        out.push('-');
    } else if plus {
        out.push('+');
    }
    if x.is_nan() {
        return out.push_str("nan");
    }
    if x.is_infinite() {
        return out.push_str("inf");
    }
    let a = x.abs();
    if a == 0.0 {
        return out.push('0');
    }
    // The P significant digits of %e (the exact value rounded), trailing zeros dropped; %g's
    // fixed form has the same digits, so one conversion serves both forms.
    let (digits, exp) = significant(a);
    let digits = trim_zeros(&digits);
    let d = |r: std::ops::Range<usize>| std::str::from_utf8(&digits[r]).expect("ASCII digits");
    let n = digits.len();
    if (-4..P).contains(&exp) {
        if exp >= 0 {
            let int = exp as usize + 1;
            if n <= int {
                out.push_str(d(0..n));
                out.extend(std::iter::repeat_n('0', int - n));
            } else {
                out.push_str(d(0..int));
                out.push('.');
                out.push_str(d(int..n));
            }
        } else {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-exp - 1) as usize));
            out.push_str(d(0..n));
        }
    } else {
        out.push_str(d(0..1));
        if n > 1 {
            out.push('.');
            out.push_str(d(1..n));
        }
        out.push('e');
        out.push(if exp < 0 { '-' } else { '+' });
        // (Writing to a String cannot fail.)
        let _ = write!(out, "{:02}", exp.unsigned_abs());
    }
}

/// Digits without their trailing zeros (at least one digit stays).
fn trim_zeros(d: &[u8]) -> &[u8] {
    let n = d.iter().rposition(|&c| c != b'0').map_or(1, |i| i + 1);
    &d[..n]
}

/// Significant digits that [`Digits::parse`] keeps.
const MAX_DIGITS: usize = 8;

/// Decimal digits (no leading or trailing zeros; at most [`MAX_DIGITS`]) and the decimal
/// exponent of the first.
struct Digits {
    b: [u8; MAX_DIGITS],
    n: usize,
    exp: i32,
}

impl Digits {
    fn get(&self) -> &[u8] {
        &self.b[..self.n]
    }

    /// The digits of a float written as `123.45`, `0.00012`, `1.5e-7`, `1e16` or `1.25e+30`.
    fn parse(text: &[u8]) -> Digits {
        let (mantissa, exponent) =
            text.split_at(text.iter().position(|&c| c == b'e').unwrap_or(text.len()));
        let mut e = 0i32;
        for &c in exponent {
            if c.is_ascii_digit() {
                e = e * 10 + i32::from(c - b'0');
            }
        }
        if exponent.get(1) == Some(&b'-') {
            e = -e;
        }
        let point = mantissa
            .iter()
            .position(|&c| c == b'.')
            .unwrap_or(mantissa.len());
        let mut d = Digits {
            b: [0; MAX_DIGITS],
            n: 0,
            exp: 0,
        };
        // Leading zeros, on either side of the point: the first significant digit is that many
        // places further right.
        let mut digits = mantissa.iter().filter(|&&c| c != b'.');
        let mut leading = 0i32;
        for &c in digits.by_ref() {
            if c != b'0' {
                d.b[0] = c;
                d.n = 1;
                break;
            }
            leading += 1;
        }
        // Eight digits tell how six round; a cut that ends in 5 (with zeros) looks like a tie,
        // which takes the exact conversion.
        for &c in digits.take(MAX_DIGITS - 1) {
            d.b[d.n] = c;
            d.n += 1;
        }
        d.exp = point as i32 - leading - 1 + e;
        d.n = trim_zeros(&d.b[..d.n]).len();
        d
    }
}

/// The 6 significant digits of `a` (finite, positive) as %e rounds its exact value, and the
/// decimal exponent of the first.
///
/// Fast path: the shortest digits that read back as `a` (ryu), rounded to 6. For a normal `a`
/// this equals rounding the exact value. The shortest digits S lie within half an ulp of `a`
/// (relative 2^-53); if a 6-digit rounding boundary H (7 digits ending in 5) lay strictly between
/// `a` and S, H would read back as `a` too, so S would have at most 7 digits, and two distinct
/// numbers of at most 7 digits are at least 1e-8 apart relatively, far more than half an ulp. So
/// only S = H is ambiguous (7 digits ending in 5: the exact value may lie on either side), and
/// subnormals, whose ulp is relatively large: both take the exact conversion (`{:.5e}`). Only
/// S's first eight digits are kept: when they end in 5 and zeros it looks like H, and also takes
/// the exact conversion.
fn significant(a: f64) -> ([u8; 6], i32) {
    let mut out = [b'0'; 6];
    if a >= f64::MIN_POSITIVE {
        let mut buf = ryu::Buffer::new();
        let s = Digits::parse(buf.format_finite(a).as_bytes());
        let (d, mut exp) = (s.get(), s.exp);
        let n = d.len();
        if !(n == 7 && d[6] == b'5') {
            let k = n.min(6);
            out[..k].copy_from_slice(&d[..k]);
            // Digits past the sixth: a 7th above 5, or 5 followed by more (trailing zeros are
            // trimmed, so an 8th digit is not zero), round up.
            if n > 6 && (d[6] > b'5' || (d[6] == b'5' && n > 7)) {
                let mut i = 6;
                loop {
                    if i == 0 {
                        // 999999 rounds to 1000000: one digit more, one power of ten up.
                        out = *b"100000";
                        exp += 1;
                        break;
                    }
                    i -= 1;
                    if out[i] == b'9' {
                        out[i] = b'0';
                    } else {
                        out[i] += 1;
                        break;
                    }
                }
            }
            return (out, exp);
        }
    }
    // (Rare: ties and subnormals. One allocation is nothing next to the exact conversion.)
    let d = Digits::parse(format!("{a:.5e}").as_bytes());
    out[..d.n].copy_from_slice(d.get());
    (out, d.exp)
}

/// Drop trailing zeros after a decimal point, and the point itself if nothing follows it.
#[cfg(test)]
fn strip_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

/// Python's `str.isspace`: Unicode White_Space plus the four ASCII separators \x1c..\x1f.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Collapse every whitespace run to one space and trim the ends (Python's `" ".join(s.split())`).
pub fn collapse_ws(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for word in s.split(is_py_space).filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// Code points a cell keeps whole.
const CELL_LIMIT: usize = 70;

/// A CHECKLIST.md table cell: whitespace collapsed, `|` escaped as `\|`, longer than 70 code
/// points cut to its first 69 (trailing whitespace dropped) and `…`; empty is `—`.
pub fn cell(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(4 * CELL_LIMIT) + 4);
    push_cell(&mut out, s);
    out
}

/// [`cell`] appended to `out`, in one pass over `s` and without allocating: collapsing and
/// escaping as it goes, copying runs of plain ASCII whole, and stopping once the cell is known to
/// be cut.
pub fn push_cell(out: &mut String, s: &str) {
    // Most cells are short ASCII whose whitespace is already single spaces between words: they
    // are the text itself, with `|` escaped.
    if let Some(pipes) = simple_ascii(s)
        && s.len() + pipes <= CELL_LIMIT
    {
        if s.is_empty() {
            out.push('—');
        }
        for (k, part) in s.split('|').enumerate() {
            if k > 0 {
                out.push_str("\\|");
            }
            out.push_str(part);
        }
        return;
    }
    let start = out.len();
    // Code points written, and the byte where the 70th begins (the cut).
    let mut count = 0usize;
    let mut cut = None;
    let mut space = false;
    let mut emit = |out: &mut String, text: &str, width: usize, count: &mut usize| {
        // `text` is plain ASCII (one byte a code point) or a single character.
        if cut.is_none() && *count + width >= CELL_LIMIT {
            cut = Some(out.len() + (CELL_LIMIT - 1 - *count));
        }
        out.push_str(text);
        *count += width;
    };
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() && count <= CELL_LIMIT {
        let end = bytes.len().min(i + CELL_LIMIT + 1 - count);
        let mut run = 0;
        while i + run < end && PLAIN[usize::from(bytes[i + run])] {
            run += 1;
        }
        let (text, width) = if run > 0 {
            (&s[i..i + run], run)
        } else {
            let c = s[i..].chars().next().expect("i is on a character boundary");
            let text = &s[i..i + c.len_utf8()];
            if is_py_space(c) {
                space = count > 0;
                i += text.len();
                continue;
            }
            (text, 1)
        };
        if space {
            emit(out, " ", 1, &mut count);
            space = false;
        }
        if text == "|" {
            emit(out, "\\", 1, &mut count);
        }
        emit(out, text, width, &mut count);
        i += text.len();
    }
    if count > CELL_LIMIT {
        // Runs are collapsed: at most one space ends the cut.
        out.truncate(cut.expect("set once 70 code points were written"));
        if out.len() > start && out.ends_with(' ') {
            out.pop();
        }
        out.push('…');
    } else if count == 0 {
        out.push('—');
    }
}

/// The number of `|` in `s` if it is ASCII that collapsing whitespace leaves as it is: no
/// whitespace but single spaces between other characters.
fn simple_ascii(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    if b.first() == Some(&b' ') || b.last() == Some(&b' ') {
        return None;
    }
    let mut pipes = 0;
    let mut space = false;
    for &c in b {
        match c {
            b' ' if space => return None,
            b' ' => space = true,
            b'|' => {
                pipes += 1;
                space = false;
            }
            _ if PLAIN[usize::from(c)] => space = false,
            _ => return None,
        }
    }
    Some(pipes)
}

/// ASCII that is copied as it is: not whitespace to Python, not `|`.
const PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 0x80 {
        t[b] = !matches!(b as u8, b'|' | b'\t'..=b'\r' | b' ' | 0x1c..=0x1f);
        b += 1;
    }
    t
};

/// `s` left-aligned in `width` code points, as `{:<width}` pads it.
pub fn push_padded(out: &mut String, s: &str, width: usize) {
    out.push_str(s);
    pad_from(out, out.len() - s.len(), width);
}

/// Pad what was written to `out` since byte `start` to `width` code points.
pub fn pad_from(out: &mut String, start: usize, width: usize) {
    const SPACES: &str = "                                ";
    let text = &out[start..];
    let n = if text.is_ascii() {
        text.len()
    } else {
        text.chars().count()
    };
    let mut pad = width.saturating_sub(n);
    while pad > 0 {
        let k = pad.min(SPACES.len());
        out.push_str(&SPACES[..k]);
        pad -= k;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(x: f64, want: &str, want_signed: &str) {
        assert_eq!(g(x), want, "%g of {x:?}");
        assert_eq!(g_signed(x), want_signed, "%+g of {x:?}");
    }

    /// Expected strings are what Python 3 prints for `format(x, 'g')` and `format(x, '+g')`.
    #[test]
    fn percent_g_matches_c_and_python() {
        check(0.041234567, "0.0412346", "+0.0412346");
        check(1e-05, "1e-05", "+1e-05");
        check(1e6, "1e+06", "+1e+06");
        check(0.1 + 0.2, "0.3", "+0.3");
        check(100000.0, "100000", "+100000");
        check(1e16, "1e+16", "+1e+16");
        check(-2.5, "-2.5", "-2.5");
        check(-0.00856543, "-0.00856543", "-0.00856543");
        check(0.02, "0.02", "+0.02");
        check(3.0, "3", "+3");
        check(42.0, "42", "+42");
        check(-7.0, "-7", "-7");
        check(0.0, "0", "+0");
        check(-0.0, "-0", "-0");
        check(f64::NAN, "nan", "+nan");
        check(-f64::NAN, "nan", "+nan");
        check(f64::INFINITY, "inf", "+inf");
        check(f64::NEG_INFINITY, "-inf", "-inf");
        check(123456789.0, "1.23457e+08", "+1.23457e+08");
        check(0.0001, "0.0001", "+0.0001");
        check(0.00001234, "1.234e-05", "+1.234e-05");
        check(1.5e300, "1.5e+300", "+1.5e+300");
        check(5e-324, "4.94066e-324", "+4.94066e-324");
        check(999999.5, "1e+06", "+1e+06");
        check(9999995.0, "1e+07", "+1e+07");
        check(9.999995e-05, "0.0001", "+0.0001");
        check(12345.6789, "12345.7", "+12345.7");
        check(999999.0, "999999", "+999999");
        check(1234567.0, "1.23457e+06", "+1.23457e+06");
        check(0.5, "0.5", "+0.5");
        check(2.5e-5, "2.5e-05", "+2.5e-05");
        check(f64::MAX, "1.79769e+308", "+1.79769e+308");
        check(1e100, "1e+100", "+1e+100");
        check(0.000123456789, "0.000123457", "+0.000123457");
    }

    /// The textbook %g: %e to find the exponent, then %f or %e at the right precision.
    fn reference_g(x: f64) -> String {
        let e_form = format!("{:.5e}", x.abs());
        let exp: i32 = e_form.split_once('e').unwrap().1.parse().unwrap();
        let sign = if x.is_sign_negative() { "-" } else { "" };
        if (-4..6).contains(&exp) {
            let f = format!("{:.*}", (5 - exp) as usize, x.abs());
            format!("{sign}{}", strip_zeros(&f))
        } else {
            let (m, _) = e_form.split_once('e').unwrap();
            let es = if exp < 0 { '-' } else { '+' };
            format!("{sign}{}e{es}{:02}", strip_zeros(m), exp.abs())
        }
    }

    #[test]
    fn percent_g_agrees_with_the_textbook_form_on_many_values() {
        // Seeded: bit patterns across the whole range, and values near the fixed/exponent and
        // rounding boundaries.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || crate::testing::xorshift(&mut state);
        for _ in 0..20_000 {
            let x = f64::from_bits(next());
            if x.is_finite() && x != 0.0 {
                assert_eq!(g(x), reference_g(x), "{x:e}");
            }
            let scale = 10f64.powi((next() % 24) as i32 - 12);
            let y = (next() % 2_000_000) as f64 / 2.0 * scale;
            if y != 0.0 {
                assert_eq!(g(y), reference_g(y), "{y:e}");
                assert_eq!(g(-y), reference_g(-y), "{y:e}");
            }
            // Seven digits ending in 5 (a tie of the decimal, not of the double), the doubles
            // on either side, carries (9999995), and subnormals: where the shortest digits
            // alone could round the wrong way.
            let k = (next() % 40) as i32 - 20;
            let tie = format!("{}5e{k}", next() % 1_000_000)
                .parse::<f64>()
                .unwrap();
            let nines = format!("9999995e{k}").parse::<f64>().unwrap();
            let sub = f64::from_bits(next() % (1 << 52));
            let ties = [tie, tie.next_up(), tie.next_down(), nines, nines.next_up()];
            for z in ties.into_iter().chain([nines.next_down(), sub]) {
                if z != 0.0 {
                    assert_eq!(g(z), reference_g(z), "{z:e}");
                }
            }
        }
    }

    /// [`cell`] as first written: collapse, escape, then cut.
    fn reference_cell(s: &str) -> String {
        let text = collapse_ws(s).replace('|', "\\|");
        let text = if text.chars().count() > CELL_LIMIT {
            let cut: String = text.chars().take(CELL_LIMIT - 1).collect();
            format!("{}…", cut.trim_end_matches(is_py_space))
        } else {
            text
        };
        if text.is_empty() {
            "—".to_owned()
        } else {
            text
        }
    }

    #[test]
    fn cells_agree_with_collapse_escape_then_cut_on_many_strings() {
        let alphabet = [
            'a', 'é', '注', '|', ' ', '\t', '\n', '\u{1f}', '\u{a0}', '\u{3000}', '…',
        ];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || crate::testing::xorshift(&mut state);
        for _ in 0..20_000 {
            let len = (next() % 90) as usize;
            // Mostly letters, so that cuts land anywhere; sometimes runs of anything.
            let s: String = (0..len)
                .map(|_| {
                    let r = next();
                    if r % 3 == 0 {
                        alphabet[(r >> 8) as usize % alphabet.len()]
                    } else {
                        'x'
                    }
                })
                .collect();
            let mut out = String::from("prefix ");
            push_cell(&mut out, &s);
            assert_eq!(out, format!("prefix {}", reference_cell(&s)), "{s:?}");
        }
    }

    #[test]
    fn cells_collapse_escape_and_cut_by_code_points() {
        let cases: &[(&str, &str)] = &[
            ("", "—"),
            ("   \n\t ", "—"),
            ("a  b\n\tc", "a b c"),
            ("x | y", "x \\| y"),
            ("nbsp\u{a0}here", "nbsp here"),
            ("sep\u{1f}unit", "sep unit"),
        ];
        for (input, want) in cases {
            assert_eq!(cell(input), *want, "{input:?}");
        }
        // 70 code points stay; 71 are cut to 69 and an ellipsis.
        let seventy = "é".repeat(70);
        assert_eq!(cell(&seventy), seventy);
        let cut = cell(&"é".repeat(71));
        assert_eq!(cut.chars().count(), 70);
        assert_eq!(cut, format!("{}…", "é".repeat(69)));
        // A space at the cut is dropped before the ellipsis.
        let s = format!("{} tail that is long enough to be cut off", "a".repeat(68));
        assert_eq!(cell(&s), format!("{}…", "a".repeat(68)));
        // Escaping happens before the cut, as in the reference.
        let s = format!("{}|z and more", "b".repeat(68));
        assert_eq!(cell(&s), format!("{}\\…", "b".repeat(68)));
    }
}
