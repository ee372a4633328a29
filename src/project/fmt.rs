//! Text rules of the reference: C's `%g` and `%+g`, and CHECKLIST.md table cells.

/// C's (and Python's) `%g`: 6 significant digits, the shorter of fixed and exponent form,
/// trailing zeros dropped. Non-finite values print as Python prints them: `nan`, `inf`, `-inf`.
pub fn g(x: f64) -> String {
    format_g(x, false)
}

/// C's `%+g`: as [`g`], with a sign always (`+0.02`, `-0.00856543`, `+nan`).
pub fn g_signed(x: f64) -> String {
    format_g(x, true)
}

fn format_g(x: f64, plus: bool) -> String {
    const P: i32 = 6;
    let sign = if x.is_sign_negative() && !x.is_nan() {
        "-"
    } else if plus {
        "+"
    } else {
        ""
    };
    if x.is_nan() {
        return format!("{sign}nan");
    }
    if x.is_infinite() {
        return format!("{sign}inf");
    }
    let a = x.abs();
    if a == 0.0 {
        return format!("{sign}0");
    }
    // %e with P significant digits: the digits and the exponent after rounding. %g's fixed form
    // has the same P significant digits (both round the exact value), so one exact conversion
    // serves both forms.
    let e_form = format!("{:.*e}", (P - 1) as usize, a);
    let (mantissa, exp) = e_form.split_once('e').expect("{:e} always has an exponent");
    let exp: i32 = exp.parse().expect("{:e} exponent is an integer");
    if (-4..P).contains(&exp) {
        let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
        let fixed = if exp >= 0 {
            let (int, frac) = digits.split_at(exp as usize + 1);
            format!("{int}.{frac}")
        } else {
            format!("0.{}{digits}", "0".repeat((-exp - 1) as usize))
        };
        format!("{sign}{}", strip_zeros(&fixed))
    } else {
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{}e{esign}{:02}", strip_zeros(mantissa), exp.abs())
    }
}

/// Drop trailing zeros after a decimal point, and the point itself if nothing follows it.
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

/// A CHECKLIST.md table cell: whitespace collapsed, `|` escaped as `\|`, longer than 70 code
/// points cut to its first 69 (trailing whitespace dropped) and `…`; empty is `—`.
pub fn cell(s: &str) -> String {
    const LIMIT: usize = 70;
    let text = collapse_ws(s).replace('|', "\\|");
    let text = if text.chars().count() > LIMIT {
        let cut: String = text.chars().take(LIMIT - 1).collect();
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
        // A small deterministic generator (xorshift): bit patterns across the whole range, and
        // values near the fixed/exponent and rounding boundaries.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
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
