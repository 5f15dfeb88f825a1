//! `numeric`: binary form → the exact decimal string PostgreSQL prints.
//!
//! Binary layout (`numeric_send`): i16 ndigits, i16 weight, u16 sign, u16 dscale, then
//! `ndigits` base-10000 digits (u16, each 0..=9999). The value is
//! Σ digit[i] · 10000^(weight − i); `dscale` is the number of decimal digits shown after the
//! point (digits beyond what is stored print as 0, stored digits beyond it are cut).

use super::read::{Bad, Reader};

const NUMERIC_POS: u16 = 0x0000;
const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;
const NUMERIC_PINF: u16 = 0xD000;
const NUMERIC_NINF: u16 = 0xF000;
/// `dscale` is a 14-bit field in PostgreSQL.
const DSCALE_MASK: u16 = 0x3FFF;

pub(crate) fn write_numeric(out: &mut Vec<u8>, raw: &[u8]) -> Result<(), Bad> {
    let mut r = Reader::new(raw);
    let ndigits = r.i16()?;
    let weight = i64::from(r.i16()?);
    let sign = r.u16()?;
    let dscale = r.u16()?;
    let ndigits = usize::try_from(ndigits).map_err(|_| Bad::from("negative digit count"))?;
    let digits = r.rest();
    if digits.len() != ndigits * 2 {
        return Err(Bad(format!(
            "{ndigits} digits announced, {} bytes follow",
            digits.len()
        )
        .into()));
    }
    let special: &[u8] = match sign {
        NUMERIC_POS | NUMERIC_NEG => b"",
        NUMERIC_NAN => b"\"NaN\"",
        NUMERIC_PINF => b"\"Infinity\"",
        NUMERIC_NINF => b"\"-Infinity\"",
        _ => return Err(Bad(format!("invalid sign word {sign:#06x}").into())),
    };
    if !special.is_empty() {
        out.extend_from_slice(special);
        return Ok(());
    }
    if dscale & !DSCALE_MASK != 0 {
        return Err(Bad(format!("invalid display scale {dscale:#06x}").into()));
    }
    let mut any_nonzero = false;
    for pair in digits.chunks_exact(2) {
        let d = u16::from_be_bytes([pair[0], pair[1]]);
        if d > 9999 {
            return Err(Bad(format!("invalid base-10000 digit {d}").into()));
        }
        any_nonzero |= d != 0;
    }
    // Digit `i` counted from the first stored digit; positions outside the stored ones are 0.
    let digit = |i: i64| -> u16 {
        usize::try_from(i)
            .ok()
            .and_then(|i| digits.get(i * 2..i * 2 + 2))
            .map_or(0, |p| u16::from_be_bytes([p[0], p[1]]))
    };

    out.push(b'"');
    // PostgreSQL never stores a negative zero; don't print one for odd input either.
    if sign == NUMERIC_NEG && any_nonzero {
        out.push(b'-');
    }
    // Integer part: groups 0..=weight, the first without leading zeros.
    let mut pos: i64;
    if weight < 0 {
        out.push(b'0');
        pos = weight + 1;
    } else {
        pos = 0;
        while pos <= weight {
            let d = digit(pos);
            let group = [
                (d / 1000) as u8,
                (d / 100 % 10) as u8,
                (d / 10 % 10) as u8,
                (d % 10) as u8,
            ];
            let skip = if pos == 0 {
                group[..3].iter().take_while(|&&g| g == 0).count()
            } else {
                0
            };
            out.extend(group[skip..].iter().map(|g| b'0' + g));
            pos += 1;
        }
    }
    // Fraction: exactly `dscale` decimal digits, starting at group `pos`.
    if dscale > 0 {
        out.push(b'.');
        let mut left = usize::from(dscale);
        while left > 0 {
            let d = digit(pos);
            let group = [
                (d / 1000) as u8,
                (d / 100 % 10) as u8,
                (d / 10 % 10) as u8,
                (d % 10) as u8,
            ];
            let take = left.min(4);
            out.extend(group[..take].iter().map(|g| b'0' + g));
            left -= take;
            pos += 1;
        }
    }
    out.push(b'"');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds the binary form from parts.
    fn bin(weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(digits.len() as i16).to_be_bytes());
        v.extend_from_slice(&weight.to_be_bytes());
        v.extend_from_slice(&sign.to_be_bytes());
        v.extend_from_slice(&dscale.to_be_bytes());
        for d in digits {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v
    }

    /// Encodes a decimal string the way `numeric_send` would (test oracle, independent of
    /// the decoder): base-10000 groups aligned on the decimal point, zero groups stripped
    /// at both ends.
    fn encode(text: &str) -> Vec<u8> {
        let (neg, t) = match text.strip_prefix('-') {
            Some(t) => (true, t),
            None => (false, text),
        };
        let (int, frac) = t.split_once('.').unwrap_or((t, ""));
        let dscale = frac.len() as u16;
        let int = int.trim_start_matches('0');
        let int_groups = int.len().div_ceil(4);
        let padded_int = format!("{:0>w$}", int, w = int_groups * 4);
        let frac_groups = frac.len().div_ceil(4);
        let padded_frac = format!("{:0<w$}", frac, w = frac_groups * 4);
        let all = format!("{padded_int}{padded_frac}");
        let mut groups: Vec<u16> = all
            .as_bytes()
            .chunks(4)
            .map(|c| {
                std::str::from_utf8(c)
                    .expect("ascii")
                    .parse()
                    .expect("digits")
            })
            .collect();
        let mut weight = int_groups as i16 - 1;
        while groups.first() == Some(&0) {
            groups.remove(0);
            weight -= 1;
        }
        while groups.last() == Some(&0) {
            groups.pop();
        }
        if groups.is_empty() {
            weight = 0;
        }
        let sign = if neg && !groups.is_empty() {
            NUMERIC_NEG
        } else {
            NUMERIC_POS
        };
        bin(weight, sign, dscale, &groups)
    }

    fn text(raw: &[u8]) -> String {
        let mut out = Vec::new();
        write_numeric(&mut out, raw).expect("valid numeric");
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn roundtrips_decimal_strings() {
        for t in [
            "0",
            "0.00",
            "1",
            "-1",
            "10000",
            "9999",
            "10001",
            "123.4500",
            "-0.001",
            "0.0001",
            "0.00001",
            "1000000000000000000000000.5",
            "12345678901234567890.123456789",
            "0.00000000000000000001",
            "-98765.4321",
            "100000000",
            "1.0000",
            "3.14159265358979323846264338327950288",
            "-0.5",
            "5000.0005",
        ] {
            assert_eq!(text(&encode(t)), format!("\"{t}\""), "{t}");
        }
    }

    #[test]
    fn hand_built_layouts() {
        // scale larger than the stored digits: 1.5 with dscale 6
        assert_eq!(text(&bin(0, NUMERIC_POS, 6, &[1, 5000])), "\"1.500000\"");
        // negative weight: 0.00000123 = 123 * 10000^-2 (weight -2: first group is 10^-8)
        assert_eq!(text(&bin(-2, NUMERIC_POS, 8, &[123])), "\"0.00000123\"");
        // stored digits beyond dscale are cut, as PostgreSQL does
        assert_eq!(text(&bin(0, NUMERIC_POS, 1, &[1, 2345])), "\"1.2\"");
        // weight beyond stored digits: trailing zero groups
        assert_eq!(text(&bin(2, NUMERIC_POS, 0, &[7])), "\"700000000\"");
        // zero with scale
        assert_eq!(text(&bin(0, NUMERIC_POS, 2, &[])), "\"0.00\"");
        // negative zero is printed without sign
        assert_eq!(text(&bin(0, NUMERIC_NEG, 0, &[])), "\"0\"");
        // large weight, tiny input
        let big = text(&bin(100, NUMERIC_POS, 0, &[1]));
        assert_eq!(big.len(), 2 + 1 + 400);
        assert_eq!(text(&bin(0, NUMERIC_NAN, 0, &[])), "\"NaN\"");
        assert_eq!(text(&bin(0, NUMERIC_PINF, 0, &[])), "\"Infinity\"");
        assert_eq!(text(&bin(0, NUMERIC_NINF, 0, &[])), "\"-Infinity\"");
    }

    #[test]
    fn malformed() {
        let mut out = Vec::new();
        let bad: &[&[u8]] = &[
            &[],
            &[0, 1, 0, 0, 0, 0],
            &[0, 1, 0, 0, 0, 0, 0, 0], // one digit announced, none present
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 1], // trailing bytes
            &[0xff, 0xff, 0, 0, 0, 0, 0, 0], // negative ndigits
            &[0, 0, 0, 0, 0x12, 0x34, 0, 0], // bad sign
            &[0, 0, 0, 0, 0, 0, 0xC0, 0], // bad dscale
            &[0, 1, 0, 0, 0, 0, 0, 0, 0x27, 0x10], // digit 10000
        ];
        for raw in bad {
            assert!(write_numeric(&mut out, raw).is_err(), "{raw:?}");
        }
    }
}
