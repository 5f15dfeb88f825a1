//! JSON output primitives: string escaping, numbers, hex strings, embedded JSON, and
//! PostgreSQL's float8 text form (used inside geometric values).

use super::read::Bad;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Per byte: 0 = copy as is, `u` = write `\u00XX`, anything else = write `\` + that byte.
static ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = b'u';
        i += 1;
    }
    t[b'\n' as usize] = b'n';
    t[b'\r' as usize] = b'r';
    t[b'\t' as usize] = b't';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

/// Appends `s` as a JSON string literal (with quotes). `"`, `\` and control characters are
/// escaped (`\n`, `\r`, `\t`, others as `\u00XX`); everything else, non-ASCII included, is
/// copied as UTF-8.
pub fn write_json_str(out: &mut Vec<u8>, s: &str) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    write_escaped(out, s);
    out.push(b'"');
}

fn write_escaped(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc = ESCAPE[usize::from(b)];
        if esc == 0 {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        if esc == b'u' {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.push(b'\\');
            out.push(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// A text value from PostgreSQL (UTF-8, since tokio-postgres sets client_encoding=UTF8).
pub(crate) fn write_text(out: &mut Vec<u8>, raw: &[u8]) -> Result<(), Bad> {
    let s = std::str::from_utf8(raw).map_err(|_| Bad::from("text is not valid UTF-8"))?;
    write_json_str(out, s);
    Ok(())
}

/// Embeds JSON text verbatim after checking that it is exactly one valid JSON value, so a
/// broken value can never corrupt the surrounding frame.
pub(crate) fn write_embedded_json(out: &mut Vec<u8>, raw: &[u8]) -> Result<(), Bad> {
    let s = std::str::from_utf8(raw).map_err(|_| Bad::from("JSON text is not valid UTF-8"))?;
    serde_json::from_str::<serde::de::IgnoredAny>(s)
        .map_err(|e| Bad(format!("embedded JSON text is invalid: {e}").into()))?;
    out.extend_from_slice(s.trim_matches([' ', '\t', '\n', '\r']).as_bytes());
    Ok(())
}

/// `"\\x0a1b"`: PostgreSQL's hex format for bytea, as a JSON string (the backslash is
/// escaped in JSON).
pub(crate) fn write_hex_str(out: &mut Vec<u8>, raw: &[u8]) {
    out.reserve(raw.len() * 2 + 5);
    out.extend_from_slice(b"\"\\\\x");
    write_hex(out, raw);
    out.push(b'"');
}

pub(crate) fn write_hex(out: &mut Vec<u8>, raw: &[u8]) {
    out.reserve(raw.len() * 2);
    for &b in raw {
        out.extend_from_slice(&[HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
    }
}

pub(crate) fn write_int<I: itoa::Integer>(out: &mut Vec<u8>, v: I) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

pub(crate) fn write_bool(out: &mut Vec<u8>, v: bool) {
    out.extend_from_slice(if v { b"true" } else { b"false" });
}

/// Non-finite floats have no JSON number form; they become the strings PostgreSQL prints.
fn write_nonfinite(out: &mut Vec<u8>, nan: bool, negative: bool) {
    out.extend_from_slice(match (nan, negative) {
        (true, _) => b"\"NaN\"",
        (false, false) => b"\"Infinity\"",
        (false, true) => b"\"-Infinity\"",
    });
}

pub(crate) fn write_f64(out: &mut Vec<u8>, v: f64) {
    if v.is_finite() {
        out.extend_from_slice(ryu::Buffer::new().format_finite(v).as_bytes());
    } else {
        write_nonfinite(out, v.is_nan(), v < 0.0);
    }
}

/// Formatted as f32, so the shortest digits that round-trip *float4* are used (1.1, not
/// 1.100000023841858).
pub(crate) fn write_f32(out: &mut Vec<u8>, v: f32) {
    if v.is_finite() {
        out.extend_from_slice(ryu::Buffer::new().format_finite(v).as_bytes());
    } else {
        write_nonfinite(out, v.is_nan(), v < 0.0);
    }
}

/// PostgreSQL's float8 text output (`extra_float_digits` > 0, the default since 12): the
/// shortest round-trip digits, fixed notation when the decimal exponent is in -4..15, else
/// `d.ddde±XX` with at least two exponent digits; `NaN`, `Infinity`, `-Infinity`, `-0`.
pub(crate) fn write_pg_float8(out: &mut Vec<u8>, v: f64) {
    if v.is_nan() {
        out.extend_from_slice(b"NaN");
        return;
    }
    if v.is_infinite() {
        out.extend_from_slice(if v < 0.0 { b"-Infinity" } else { b"Infinity" });
        return;
    }
    if v.is_sign_negative() {
        out.push(b'-');
    }
    if v == 0.0 {
        out.push(b'0');
        return;
    }
    let v = v.abs();
    let mut ryu_buf = ryu::Buffer::new();
    let (mut digits, mut exp) = shortest_digits(ryu_buf.format_finite(v).as_bytes());
    // PostgreSQL's copy of Ryu never picks a decimal lying exactly on the boundary between
    // two doubles (the ryu crate does when the mantissa is even; both parse back to `v`).
    // In that rare case take the shortest correctly rounded form strictly inside.
    if on_boundary(v, digits.as_slice(), exp) {
        for n in digits.len + 1..=17 {
            let text = format!("{v:.*e}", n - 1);
            let (d, e) = shortest_digits(text.as_bytes());
            if text.parse::<f64>().ok() == Some(v) && !on_boundary(v, d.as_slice(), e) {
                (digits, exp) = (d, e);
                break;
            }
        }
    }
    let digits = digits.as_slice();
    if (-4..15).contains(&exp) {
        if exp < 0 {
            out.extend_from_slice(b"0.");
            out.extend(std::iter::repeat(b'0').take(exp.unsigned_abs() as usize - 1));
            out.extend_from_slice(digits);
        } else {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                out.extend_from_slice(digits);
                out.extend(std::iter::repeat(b'0').take(int_len - digits.len()));
            } else {
                out.extend_from_slice(&digits[..int_len]);
                out.push(b'.');
                out.extend_from_slice(&digits[int_len..]);
            }
        }
    } else {
        if let Some((first, rest)) = digits.split_first() {
            out.push(*first);
            if !rest.is_empty() {
                out.push(b'.');
                out.extend_from_slice(rest);
            }
        }
        out.push(b'e');
        out.push(if exp < 0 { b'-' } else { b'+' });
        if exp.unsigned_abs() < 10 {
            out.push(b'0');
        }
        write_int(out, exp.unsigned_abs());
    }
}

/// Whether the decimal `0.d1d2… × 10^(exp+1)` equals one of the two rounding boundaries of
/// the positive double `v` (the midpoints to its neighbours), compared exactly by splitting
/// both sides into 2^a · 5^b · rest.
fn on_boundary(v: f64, digits: &[u8], exp: i32) -> bool {
    if digits.is_empty() || digits.len() > 19 {
        return false;
    }
    let bits = v.to_bits();
    let ieee_mantissa = bits & ((1 << 52) - 1);
    let ieee_exponent = (bits >> 52) & 0x7ff;
    // v = 4·m2 · 2^e2; the boundaries are (4·m2 + 2) · 2^e2 and (4·m2 − 1 − shift) · 2^e2,
    // where the lower gap is halved at a power of two.
    let (m2, e2) = if ieee_exponent == 0 {
        (ieee_mantissa, 1 - 1023 - 52 - 2)
    } else {
        (
            ieee_mantissa | (1 << 52),
            ieee_exponent as i64 - 1023 - 52 - 2,
        )
    };
    let mm_shift = u64::from(ieee_mantissa != 0 || ieee_exponent <= 1);
    let d = digits
        .iter()
        .fold(0u64, |acc, &c| acc * 10 + u64::from(c - b'0'));
    // The candidate is d · 10^k.
    let k = i64::from(exp) - (digits.len() as i64 - 1);
    let (d_rest, d_twos, d_fives) = split_2_5(d);
    [4 * m2 + 2, 4 * m2 - 1 - mm_shift]
        .into_iter()
        .any(|bound| {
            let (b_rest, b_twos, b_fives) = split_2_5(bound);
            d_rest == b_rest && d_twos + k == b_twos + e2 && d_fives + k == b_fives
        })
}

/// n = rest · 2^twos · 5^fives with rest coprime to 10 (n > 0).
fn split_2_5(mut n: u64) -> (u64, i64, i64) {
    let (mut twos, mut fives) = (0, 0);
    while n != 0 && n % 2 == 0 {
        n /= 2;
        twos += 1;
    }
    while n != 0 && n % 5 == 0 {
        n /= 5;
        fives += 1;
    }
    (n, twos, fives)
}

/// Fixed-capacity digit string (a float's shortest form has at most 17 significant digits).
pub(crate) struct Digits {
    buf: [u8; 32],
    len: usize,
}

impl Digits {
    fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Splits ryu's output for a positive finite non-zero number (`123.0`, `0.001`, `1.5e-7`,
/// `1e100`) into its significant digits (no leading or trailing zeros) and the decimal
/// exponent of the first digit.
fn shortest_digits(s: &[u8]) -> (Digits, i32) {
    let mut d = Digits {
        buf: [0; 32],
        len: 0,
    };
    let (mantissa, exp_part) = match s.iter().position(|&c| c == b'e') {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, &[][..]),
    };
    let mut exp: i32 = 0;
    let (neg_exp, exp_digits) = match exp_part.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, exp_part),
    };
    for &c in exp_digits {
        exp = exp * 10 + i32::from(c.wrapping_sub(b'0'));
    }
    if neg_exp {
        exp = -exp;
    }
    // Position of the decimal point, counted in digits from the start of `buf`.
    let mut point: i32 = 0;
    let mut seen_point = false;
    for &c in mantissa {
        if c == b'.' {
            seen_point = true;
        } else if d.len < d.buf.len() {
            // Leading zeros only move the point.
            if d.len == 0 && c == b'0' {
                if seen_point {
                    point -= 1;
                }
                continue;
            }
            d.buf[d.len] = c;
            d.len += 1;
            if !seen_point {
                point += 1;
            }
        }
    }
    while d.len > 0 && d.buf[d.len - 1] == b'0' {
        d.len -= 1;
    }
    (d, point + exp - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        f(&mut out);
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn escapes() {
        let got = s(|o| write_json_str(o, "a\"b\\c\nd\re\tf\u{1}g\u{1f}h\u{7f}é😀/"));
        assert_eq!(got, "\"a\\\"b\\\\c\\nd\\re\\tf\\u0001g\\u001fh\u{7f}é😀/\"");
        let back: String = serde_json::from_str(&got).expect("valid json");
        assert_eq!(back, "a\"b\\c\nd\re\tf\u{1}g\u{1f}h\u{7f}é😀/");
        assert_eq!(s(|o| write_json_str(o, "")), "\"\"");
        assert_eq!(s(|o| write_json_str(o, "\u{0}")), "\"\\u0000\"");
        assert_eq!(s(|o| write_json_str(o, "\u{8}\u{c}")), "\"\\u0008\\u000c\"");
    }

    #[test]
    fn escape_every_byte_roundtrips() {
        let all: String = (0u8..128).map(char::from).collect();
        let got = s(|o| write_json_str(o, &all));
        let back: String = serde_json::from_str(&got).expect("valid json");
        assert_eq!(back, all);
    }

    #[test]
    fn pg_float8_text() {
        let cases: &[(f64, &str)] = &[
            (1.0, "1"),
            (1.5, "1.5"),
            (-2.25, "-2.25"),
            (0.0, "0"),
            (-0.0, "-0"),
            (1e20, "1e+20"),
            (1.5e-5, "1.5e-05"),
            (0.0001, "0.0001"),
            (123456789012345.0, "123456789012345"),
            (1e15, "1e+15"),
            (1e14, "100000000000000"),
            (1.0 / 3.0, "0.3333333333333333"),
            (1e100, "1e+100"),
            (1.2345e-100, "1.2345e-100"),
            (f64::MAX, "1.7976931348623157e+308"),
            (f64::MIN_POSITIVE, "2.2250738585072014e-308"),
            (5e-324, "5e-324"),
            (123.456, "123.456"),
            (0.1, "0.1"),
            (100.0, "100"),
            // Shortest digits sit exactly on a rounding boundary: PostgreSQL prints one more.
            (36459172041340144.0, "3.6459172041340144e+16"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "Infinity"),
            (f64::NEG_INFINITY, "-Infinity"),
        ];
        for &(v, want) in cases {
            assert_eq!(s(|o| write_pg_float8(o, v)), want, "{v:e}");
        }
    }

    #[test]
    fn json_floats() {
        assert_eq!(s(|o| write_f32(o, 1.1)), "1.1");
        assert_eq!(s(|o| write_f64(o, 1.1)), "1.1");
        assert_eq!(s(|o| write_f64(o, f64::NAN)), "\"NaN\"");
        assert_eq!(s(|o| write_f32(o, f32::NEG_INFINITY)), "\"-Infinity\"");
        assert_eq!(s(|o| write_f64(o, f64::INFINITY)), "\"Infinity\"");
        for v in [1e300, -1e-300, 0.0, -0.0, 12345.678] {
            let text = s(|o| write_f64(o, v));
            let back: f64 = serde_json::from_str(&text).expect("json number");
            assert_eq!(back.to_bits(), v.to_bits(), "{text}");
        }
    }

    #[test]
    fn embedded_json() {
        assert_eq!(
            s(|o| write_embedded_json(o, b" {\"a\": [1, 2]}\n").expect("ok")),
            "{\"a\": [1, 2]}"
        );
        let mut out = Vec::new();
        assert!(write_embedded_json(&mut out, b"{\"a\":").is_err());
        assert!(write_embedded_json(&mut out, b"1 2").is_err());
        assert!(write_embedded_json(&mut out, b"").is_err());
        assert!(write_embedded_json(&mut out, b"\"\xff\"").is_err());
        assert!(write_embedded_json(&mut out, b"1], \"x\": [2").is_err());
    }

    #[test]
    fn hex() {
        assert_eq!(
            s(|o| write_hex_str(o, &[0x0a, 0x1b, 0xff])),
            r#""\\x0a1bff""#
        );
        assert_eq!(s(|o| write_hex_str(o, &[])), r#""\\x""#);
    }
}
