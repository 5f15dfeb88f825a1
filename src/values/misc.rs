//! The remaining built-in scalar types, each written as a JSON string holding PostgreSQL's
//! own text form: "char", uuid, inet/cidr, macaddr(8), bit/varbit, pg_lsn, tid, geometric
//! types, tsvector, txid_snapshot/pg_snapshot.

use postgres_protocol::types as pp;

use super::json::{write_hex, write_int, write_pg_float8, write_text};
use super::oid;
use super::read::{Bad, Reader};

fn lib_err(e: Box<dyn std::error::Error + Sync + Send>) -> Bad {
    Bad(e.to_string().into())
}

/// `"char"`: one byte (an empty value is byte 0). PostgreSQL 15+ prints bytes ≥ 0x80 as
/// `\ooo` octal, since a lone high byte is not valid UTF-8; we print the same.
pub(crate) fn write_char(out: &mut Vec<u8>, raw: &[u8]) -> Result<(), Bad> {
    let b = Reader::exact(raw, 1)?.u8()?;
    match b {
        0 => out.extend_from_slice(b"\"\""),
        0x80.. => {
            out.extend_from_slice(b"\"\\\\");
            out.extend([6, 3, 0].map(|shift| b'0' + (b >> shift & 7)));
            out.push(b'"');
        }
        _ => write_text(out, &[b])?,
    }
    Ok(())
}

pub(crate) fn write_uuid(out: &mut Vec<u8>, raw: &[u8]) -> Result<(), Bad> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let u = pp::uuid_from_sql(raw).map_err(lib_err)?;
    // Built on the stack and appended once: this is a common column type.
    let mut buf = [b'-'; 38];
    buf[0] = b'"';
    buf[37] = b'"';
    let mut at = 1;
    for (i, b) in u.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            at += 1;
        }
        buf[at] = HEX[usize::from(b >> 4)];
        buf[at + 1] = HEX[usize::from(b & 0xf)];
        at += 2;
    }
    out.extend_from_slice(&buf);
    Ok(())
}

/// inet: `addr` or `addr/bits` when bits is not the full width; cidr: always `addr/bits`.
/// IPv6 is compressed the way PostgreSQL does it (see `write_ipv6`).
pub(crate) fn write_inet(out: &mut Vec<u8>, raw: &[u8], cidr: bool) -> Result<(), Bad> {
    let inet = pp::inet_from_sql(raw).map_err(lib_err)?;
    let full = match inet.addr() {
        std::net::IpAddr::V4(_) => 32,
        std::net::IpAddr::V6(_) => 128,
    };
    out.push(b'"');
    match inet.addr() {
        std::net::IpAddr::V4(a) => write_ipv4(out, a.octets()),
        std::net::IpAddr::V6(a) => write_ipv6(out, a.octets()),
    }
    if cidr || inet.netmask() != full {
        out.push(b'/');
        write_int(out, inet.netmask());
    }
    out.push(b'"');
    Ok(())
}

fn write_ipv4(out: &mut Vec<u8>, o: [u8; 4]) {
    for (i, b) in o.into_iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        write_int(out, b);
    }
}

/// RFC 5952-style compression as in PostgreSQL's `inet_net_ntop`: the longest run (≥ 2) of
/// zero groups becomes `::` (the first one on a tie), and an address whose first 96 bits are
/// zero (`::a.b.c.d`) or that is IPv4-mapped (`::ffff:a.b.c.d`) ends in dotted-quad form.
fn write_ipv6(out: &mut Vec<u8>, o: [u8; 16]) {
    let mut words = [0u16; 8];
    for (w, pair) in words.iter_mut().zip(o.chunks_exact(2)) {
        *w = u16::from_be_bytes([pair[0], pair[1]]);
    }
    let (mut best_base, mut best_len) = (usize::MAX, 0);
    let mut i = 0;
    while i < 8 {
        if words[i] == 0 {
            let start = i;
            while i < 8 && words[i] == 0 {
                i += 1;
            }
            if i - start > best_len {
                (best_base, best_len) = (start, i - start);
            }
        } else {
            i += 1;
        }
    }
    if best_len < 2 {
        best_base = usize::MAX;
    }
    let in_run = |i: usize| best_base != usize::MAX && i >= best_base && i < best_base + best_len;
    for i in 0..8 {
        if in_run(i) {
            if i == best_base {
                out.push(b':');
            }
            continue;
        }
        if i != 0 {
            out.push(b':');
        }
        if i == 6 && best_base == 0 && (best_len == 6 || (best_len == 5 && words[5] == 0xffff)) {
            write_ipv4(out, [o[12], o[13], o[14], o[15]]);
            return;
        }
        write_hex_word(out, words[i]);
    }
    if best_base != usize::MAX && best_base + best_len == 8 {
        out.push(b':');
    }
}

fn write_hex_word(out: &mut Vec<u8>, w: u16) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut started = false;
    for shift in [12, 8, 4, 0] {
        let nib = usize::from(w >> shift & 0xf);
        if nib != 0 || started || shift == 0 {
            out.push(HEX[nib]);
            started = true;
        }
    }
}

/// `08:00:2b:01:02:03` (6 bytes) or 8 groups for macaddr8.
pub(crate) fn write_macaddr(out: &mut Vec<u8>, raw: &[u8], len: usize) -> Result<(), Bad> {
    let bytes = Reader::exact(raw, len)?.rest();
    out.push(b'"');
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            out.push(b':');
        }
        write_hex(out, &[*b]);
    }
    out.push(b'"');
    Ok(())
}

/// bit/varbit: i32 bit count, then the bits packed MSB first. Written as `"0101…"`.
pub(crate) fn write_bits(out: &mut Vec<u8>, raw: &[u8]) -> Result<(), Bad> {
    let bits = pp::varbit_from_sql(raw).map_err(lib_err)?;
    out.reserve(bits.len() + 2);
    out.push(b'"');
    let mut left = bits.len();
    for &byte in bits.bytes() {
        for shift in (0..8).rev() {
            if left == 0 {
                break;
            }
            out.push(b'0' + (byte >> shift & 1));
            left -= 1;
        }
    }
    out.push(b'"');
    Ok(())
}

/// pg_lsn: u64 written as `%X/%X` of its high and low halves.
pub(crate) fn write_lsn(out: &mut Vec<u8>, raw: &[u8]) -> Result<(), Bad> {
    let v = Reader::exact(raw, 8)?.u64()?;
    out.push(b'"');
    write_upper_hex(out, v >> 32);
    out.push(b'/');
    write_upper_hex(out, v & 0xffff_ffff);
    out.push(b'"');
    Ok(())
}

fn write_upper_hex(out: &mut Vec<u8>, v: u64) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut buf = [0u8; 16];
    let mut n = 0;
    let mut v = v;
    loop {
        buf[n] = HEX[(v & 0xf) as usize];
        n += 1;
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    out.extend(buf[..n].iter().rev());
}

/// tid: u32 block number, u16 offset → `(block,offset)`.
pub(crate) fn write_tid(out: &mut Vec<u8>, raw: &[u8]) -> Result<(), Bad> {
    let mut r = Reader::exact(raw, 6)?;
    let block = r.u32()?;
    let offset = r.u16()?;
    out.extend_from_slice(b"\"(");
    write_int(out, block);
    out.push(b',');
    write_int(out, offset);
    out.extend_from_slice(b")\"");
    Ok(())
}

fn write_point(out: &mut Vec<u8>, r: &mut Reader<'_>) -> Result<(), Bad> {
    let x = r.f64()?;
    let y = r.f64()?;
    out.push(b'(');
    write_pg_float8(out, x);
    out.push(b',');
    write_pg_float8(out, y);
    out.push(b')');
    Ok(())
}

/// `n` points, comma-separated, after checking the data holds exactly that many.
fn write_points(out: &mut Vec<u8>, r: &mut Reader<'_>, n: i32) -> Result<(), Bad> {
    let n = usize::try_from(n).map_err(|_| Bad::from("negative point count"))?;
    if r.remaining() != n.saturating_mul(16) {
        return Err(Bad::from("point count does not match the data"));
    }
    for i in 0..n {
        if i > 0 {
            out.push(b',');
        }
        write_point(out, r)?;
    }
    Ok(())
}

/// Geometric types in PostgreSQL's text form, coordinates as float8 text.
pub(crate) fn write_geometric(out: &mut Vec<u8>, type_oid: u32, raw: &[u8]) -> Result<(), Bad> {
    out.push(b'"');
    match type_oid {
        oid::POINT => write_point(out, &mut Reader::exact(raw, 16)?)?,
        oid::LSEG => {
            let mut r = Reader::exact(raw, 32)?;
            out.push(b'[');
            write_point(out, &mut r)?;
            out.push(b',');
            write_point(out, &mut r)?;
            out.push(b']');
        }
        oid::BOX => {
            let mut r = Reader::exact(raw, 32)?;
            write_point(out, &mut r)?;
            out.push(b',');
            write_point(out, &mut r)?;
        }
        oid::LINE => {
            let mut r = Reader::exact(raw, 24)?;
            out.push(b'{');
            for i in 0..3 {
                if i > 0 {
                    out.push(b',');
                }
                write_pg_float8(out, r.f64()?);
            }
            out.push(b'}');
        }
        oid::CIRCLE => {
            let mut r = Reader::exact(raw, 24)?;
            out.push(b'<');
            write_point(out, &mut r)?;
            out.push(b',');
            write_pg_float8(out, r.f64()?);
            out.push(b'>');
        }
        oid::PATH => {
            let mut r = Reader::new(raw);
            // path_recv treats any non-zero byte as closed.
            let closed = r.u8()? != 0;
            let n = r.i32()?;
            let (open, close) = if closed { (b'(', b')') } else { (b'[', b']') };
            out.push(open);
            write_points(out, &mut r, n)?;
            out.push(close);
        }
        oid::POLYGON => {
            let mut r = Reader::new(raw);
            let n = r.i32()?;
            out.push(b'(');
            write_points(out, &mut r, n)?;
            out.push(b')');
        }
        _ => return Err(Bad::from("not a geometric type")),
    }
    out.push(b'"');
    Ok(())
}

/// tsvector: i32 lexeme count; per lexeme the NUL-terminated text, u16 position count and
/// that many u16 positions (weight in the top 2 bits, position in the low 14). Text form:
/// `'lexeme':pos[weight],…` separated by spaces; `'` and `\` in a lexeme are doubled;
/// weights 3/2/1 print as A/B/C, weight 0 (D) prints nothing.
pub(crate) fn write_tsvector(out: &mut Vec<u8>, raw: &[u8]) -> Result<(), Bad> {
    let mut r = Reader::new(raw);
    let count = r.i32()?;
    if count < 0 {
        return Err(Bad::from("negative lexeme count"));
    }
    let mut text = String::new();
    for i in 0..count {
        let rest = r.rest();
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| Bad::from("lexeme is not NUL-terminated"))?;
        let lexeme = std::str::from_utf8(&rest[..nul])
            .map_err(|_| Bad::from("lexeme is not valid UTF-8"))?;
        r = Reader::new(&rest[nul + 1..]);
        if i > 0 {
            text.push(' ');
        }
        text.push('\'');
        for c in lexeme.chars() {
            if c == '\'' || c == '\\' {
                text.push(c);
            }
            text.push(c);
        }
        text.push('\'');
        let npos = r.u16()?;
        for j in 0..npos {
            let wp = r.u16()?;
            text.push(if j == 0 { ':' } else { ',' });
            text.push_str(itoa::Buffer::new().format(wp & 0x3fff));
            match wp >> 14 {
                3 => text.push('A'),
                2 => text.push('B'),
                1 => text.push('C'),
                _ => {}
            }
        }
    }
    if !r.is_empty() {
        return Err(Bad::from("trailing bytes after last lexeme"));
    }
    super::json::write_json_str(out, &text);
    Ok(())
}

/// txid_snapshot / pg_snapshot: i32 nxip, u64 xmin, u64 xmax, nxip × u64 → `xmin:xmax:xip,…`
/// (the trailing `:` stays when the list is empty, as in PostgreSQL).
pub(crate) fn write_snapshot(out: &mut Vec<u8>, raw: &[u8]) -> Result<(), Bad> {
    let mut r = Reader::new(raw);
    let nxip = r.i32()?;
    let nxip = usize::try_from(nxip).map_err(|_| Bad::from("negative xip count"))?;
    let xmin = r.u64()?;
    let xmax = r.u64()?;
    if r.remaining() != nxip.saturating_mul(8) {
        return Err(Bad::from("xip count does not match the data"));
    }
    out.push(b'"');
    write_int(out, xmin);
    out.push(b':');
    write_int(out, xmax);
    out.push(b':');
    for i in 0..nxip {
        if i > 0 {
            out.push(b',');
        }
        write_int(out, r.u64()?);
    }
    out.push(b'"');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use std::net::IpAddr;

    fn run(f: impl FnOnce(&mut Vec<u8>) -> Result<(), Bad>) -> String {
        let mut out = Vec::new();
        f(&mut out).expect("valid value");
        String::from_utf8(out).expect("utf8")
    }

    fn inet(addr: &str, bits: u8, cidr: bool) -> String {
        let mut b = BytesMut::new();
        pp::inet_to_sql(addr.parse::<IpAddr>().expect("addr"), bits, &mut b);
        run(|o| write_inet(o, &b, cidr))
    }

    #[test]
    fn chars() {
        assert_eq!(run(|o| write_char(o, b"A")), "\"A\"");
        assert_eq!(run(|o| write_char(o, b"\"")), "\"\\\"\"");
        assert_eq!(run(|o| write_char(o, &[0])), "\"\"");
        assert_eq!(run(|o| write_char(o, &[0xc3])), "\"\\\\303\"");
        assert!(write_char(&mut Vec::new(), b"").is_err());
        assert!(write_char(&mut Vec::new(), b"ab").is_err());
    }

    #[test]
    fn uuids() {
        let u = [
            0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38,
            0x0a, 0x11,
        ];
        assert_eq!(
            run(|o| write_uuid(o, &u)),
            "\"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\""
        );
        assert!(write_uuid(&mut Vec::new(), &u[..15]).is_err());
    }

    #[test]
    fn inets() {
        assert_eq!(inet("192.168.0.1", 32, false), "\"192.168.0.1\"");
        assert_eq!(inet("192.168.0.1", 24, false), "\"192.168.0.1/24\"");
        assert_eq!(inet("192.168.0.0", 24, true), "\"192.168.0.0/24\"");
        assert_eq!(inet("1.2.3.4", 32, true), "\"1.2.3.4/32\"");
        assert_eq!(inet("::1", 128, false), "\"::1\"");
        assert_eq!(inet("::1", 128, true), "\"::1/128\"");
        assert_eq!(inet("2001:db8::", 32, true), "\"2001:db8::/32\"");
        // Forms checked against PostgreSQL 15's inet output.
        for (addr, want) in [
            ("::", "::"),
            ("1::", "1::"),
            ("1:0:0:1:0:0:0:1", "1:0:0:1::1"),
            ("1:0:0:2:0:0:3:4", "1::2:0:0:3:4"),
            ("::0.0.1.2", "::102"),
            ("::1.2.3.4", "::1.2.3.4"),
            ("::ffff:1.2.3.4", "::ffff:1.2.3.4"),
            ("64:ff9b::1.2.3.4", "64:ff9b::102:304"),
            ("::ffff:0:1.2.3.4", "::ffff:0:102:304"),
            ("0:0:0:0:0:1:0:0", "::1:0:0"),
            ("1:2:3:4:5:6:7:0", "1:2:3:4:5:6:7:0"),
            ("fe80::1:0:0:0", "fe80::1:0:0:0"),
            ("::ffff", "::ffff"),
            ("::fffe:1.2.3.4", "::fffe:102:304"),
            ("1:0:2:0:3:0:4:5", "1:0:2:0:3:0:4:5"),
            ("::ffff:0.0.0.0", "::ffff:0.0.0.0"),
            ("0:0:0:0:0:0:1:0", "::0.1.0.0"),
            ("2001:DB8:0:0:0:0:0:ABCD", "2001:db8::abcd"),
        ] {
            assert_eq!(inet(addr, 128, false), format!("\"{want}\""), "{addr}");
        }
        let mut out = Vec::new();
        assert!(write_inet(&mut out, &[2, 32, 0, 4, 1, 2, 3], false).is_err());
        assert!(write_inet(&mut out, &[2, 33, 0, 4, 1, 2, 3, 4], false).is_err());
        assert!(write_inet(&mut out, &[9, 32, 0, 4, 1, 2, 3, 4], false).is_err());
        assert!(write_inet(&mut out, &[2, 32, 0, 4, 1, 2, 3, 4, 5], false).is_err());
    }

    #[test]
    fn macaddrs() {
        let m = [8, 0, 0x2b, 1, 2, 3];
        assert_eq!(run(|o| write_macaddr(o, &m, 6)), "\"08:00:2b:01:02:03\"");
        let m8 = [8, 0, 0x2b, 1, 2, 3, 4, 0xff];
        assert_eq!(
            run(|o| write_macaddr(o, &m8, 8)),
            "\"08:00:2b:01:02:03:04:ff\""
        );
        assert!(write_macaddr(&mut Vec::new(), &m, 8).is_err());
    }

    #[test]
    fn bits() {
        let mut b = BytesMut::new();
        pp::varbit_to_sql(10, [0b1010_0000u8, 0b1100_0000].into_iter(), &mut b).expect("enc");
        assert_eq!(run(|o| write_bits(o, &b)), "\"1010000011\"");
        assert_eq!(run(|o| write_bits(o, &[0, 0, 0, 0])), "\"\"");
        assert!(write_bits(&mut Vec::new(), &[0, 0, 0, 9, 1]).is_err());
        assert!(write_bits(&mut Vec::new(), &[0xff, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn lsn_and_tid() {
        let v: u64 = (0x16 << 32) | 0xB374_D848;
        assert_eq!(run(|o| write_lsn(o, &v.to_be_bytes())), "\"16/B374D848\"");
        assert_eq!(run(|o| write_lsn(o, &[0; 8])), "\"0/0\"");
        assert_eq!(run(|o| write_tid(o, &[0, 0, 0, 0, 0, 1])), "\"(0,1)\"");
        assert_eq!(
            run(|o| write_tid(o, &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff])),
            "\"(4294967295,65535)\""
        );
        assert!(write_tid(&mut Vec::new(), &[0; 5]).is_err());
    }

    fn f64s(vals: &[f64]) -> Vec<u8> {
        vals.iter().flat_map(|v| v.to_be_bytes()).collect()
    }

    #[test]
    fn geometric() {
        let g = |oid, raw: &[u8]| run(|o| write_geometric(o, oid, raw));
        let mut b = BytesMut::new();
        pp::point_to_sql(1.0, 2.0, &mut b);
        assert_eq!(g(oid::POINT, &b), "\"(1,2)\"");
        assert_eq!(g(oid::POINT, &f64s(&[1e20, 1.5e-5])), "\"(1e+20,1.5e-05)\"");
        assert_eq!(
            g(oid::LSEG, &f64s(&[1.0, 2.0, 3.0, 4.0])),
            "\"[(1,2),(3,4)]\""
        );
        let mut b = BytesMut::new();
        pp::box_to_sql(3.0, 4.0, 1.0, 2.0, &mut b);
        assert_eq!(g(oid::BOX, &b), "\"(3,4),(1,2)\"");
        assert_eq!(g(oid::LINE, &f64s(&[1.0, 2.0, 3.0])), "\"{1,2,3}\"");
        assert_eq!(g(oid::CIRCLE, &f64s(&[1.0, 2.0, 3.5])), "\"<(1,2),3.5>\"");
        let mut b = BytesMut::new();
        pp::path_to_sql(false, [(1.0, 2.0), (3.0, 4.0)], &mut b).expect("enc");
        assert_eq!(g(oid::PATH, &b), "\"[(1,2),(3,4)]\"");
        let mut b = BytesMut::new();
        pp::path_to_sql(true, [(1.0, 2.0), (3.0, 4.0)], &mut b).expect("enc");
        assert_eq!(g(oid::PATH, &b), "\"((1,2),(3,4))\"");
        let mut poly = 2i32.to_be_bytes().to_vec();
        poly.extend(f64s(&[1.0, 2.0, 3.0, 4.0]));
        assert_eq!(g(oid::POLYGON, &poly), "\"((1,2),(3,4))\"");
        assert_eq!(g(oid::POINT, &f64s(&[-0.0, f64::NAN])), "\"(-0,NaN)\"");

        let mut out = Vec::new();
        assert!(write_geometric(&mut out, oid::POINT, &f64s(&[1.0])).is_err());
        assert!(write_geometric(&mut out, oid::POLYGON, &poly[..poly.len() - 1]).is_err());
        let mut neg = (-1i32).to_be_bytes().to_vec();
        neg.extend(f64s(&[1.0, 2.0]));
        assert!(write_geometric(&mut out, oid::POLYGON, &neg).is_err());
        let huge = i32::MAX.to_be_bytes();
        assert!(write_geometric(&mut out, oid::POLYGON, &huge).is_err());
        assert!(write_geometric(&mut out, oid::PATH, &[1, 0, 0, 0, 1]).is_err());
    }

    fn tsv(lexemes: &[(&str, &[u16])]) -> Vec<u8> {
        let mut v = (lexemes.len() as i32).to_be_bytes().to_vec();
        for (lex, pos) in lexemes {
            v.extend_from_slice(lex.as_bytes());
            v.push(0);
            v.extend_from_slice(&(pos.len() as u16).to_be_bytes());
            for p in *pos {
                v.extend_from_slice(&p.to_be_bytes());
            }
        }
        v
    }

    #[test]
    fn tsvectors() {
        let raw = tsv(&[
            ("a", &[1 | 3 << 14]),
            ("b\\c", &[]),
            ("cat", &[5]),
            ("fat", &[2 | 2 << 14, 4 | 1 << 14]),
            ("it's", &[3]),
        ]);
        assert_eq!(
            run(|o| write_tsvector(o, &raw)),
            r#""'a':1A 'b\\\\c' 'cat':5 'fat':2B,4C 'it''s':3""#
        );
        assert_eq!(run(|o| write_tsvector(o, &tsv(&[]))), "\"\"");
        let mut out = Vec::new();
        assert!(write_tsvector(&mut out, &raw[..raw.len() - 1]).is_err());
        assert!(write_tsvector(&mut out, &[0, 0, 0, 1, b'a']).is_err());
        assert!(write_tsvector(&mut out, &[0, 0, 0, 1, 0xff, 0, 0, 0]).is_err());
        assert!(write_tsvector(&mut out, &[0xff, 0, 0, 0]).is_err());
    }

    #[test]
    fn snapshots() {
        let mut v = 3i32.to_be_bytes().to_vec();
        for x in [10u64, 20, 10, 14, 15] {
            v.extend_from_slice(&x.to_be_bytes());
        }
        assert_eq!(run(|o| write_snapshot(o, &v)), "\"10:20:10,14,15\"");
        let mut e = 0i32.to_be_bytes().to_vec();
        e.extend_from_slice(&724u64.to_be_bytes());
        e.extend_from_slice(&724u64.to_be_bytes());
        assert_eq!(run(|o| write_snapshot(o, &e)), "\"724:724:\"");
        assert!(write_snapshot(&mut Vec::new(), &v[..v.len() - 8]).is_err());
    }
}
