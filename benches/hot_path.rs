//! Microbenchmarks of the daemon's hot path, without PostgreSQL: frame decoding, request
//! parsing, parameter conversion, row value encoding (row by row, and by column as a grouped
//! pipeline writes rows while they arrive), and catalogue lookups.
//!
//! `cargo bench --bench hot_path`. Figures are per operation; compare runs on the same machine.

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use postgres_protocol::message::backend::{DataRowBody, Message};
use qail_daemon::catalog::{HandleGen, Shape, StatementCache};
use qail_daemon::ipc::codec::{frame, FrameDecoder};
use qail_daemon::ipc::request::parse;
use qail_daemon::pg::by_column::ColumnWriter;
use qail_daemon::values::{param_text, write_value};
use tokio_postgres::types::Type;
use tokio_util::codec::Decoder;

/// A DataRow message of the seed's shape (id int4, name text), parsed as the daemon reads it.
fn data_row(id: i32, name: &[u8]) -> DataRowBody {
    let mut msg = BytesMut::new();
    msg.put_u8(b'D');
    msg.put_i32(4 + 2 + 4 + 4 + 4 + name.len() as i32);
    msg.put_i16(2);
    msg.put_i32(4);
    msg.put_i32(id);
    msg.put_i32(name.len() as i32);
    msg.put_slice(name);
    match Message::parse(&mut msg) {
        Ok(Some(Message::DataRow(row))) => row,
        _ => unreachable!("a well-formed DataRow"),
    }
}

fn pipeline_request(n: usize) -> Vec<u8> {
    let params: Vec<String> = (0..n)
        .map(|i| format!("[\"{}\"]", [10, 5, 1][i % 3]))
        .collect();
    format!(
        "{{\"id\":7,\"op\":\"pipeline\",\"handle\":\"h00000abc-1\",\"params_batch\":[{}],\"count_only\":true}}",
        params.join(",")
    )
    .into_bytes()
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    let small = frame(br#"{"id":1,"op":"query","handle":"h00000abc-1","params":["10"]}"#);
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode_small_frame", |b| {
        let mut d = FrameDecoder::new(16 << 20);
        b.iter_batched_ref(
            || BytesMut::from(&small[..]),
            |buf| d.decode(buf).ok().flatten(),
            BatchSize::SmallInput,
        )
    });
    let body = &small[4..];
    g.bench_function("parse_query_request", |b| b.iter(|| parse(body).is_ok()));
    let big = pipeline_request(10_000);
    g.throughput(Throughput::Elements(10_000));
    g.bench_function("parse_pipeline_10k", |b| {
        b.iter(|| parse(&big).map(|r| r.params_batch.map(|p| p.len())).ok())
    });
    g.finish();
}

fn values(c: &mut Criterion) {
    let mut g = c.benchmark_group("values");
    g.throughput(Throughput::Elements(1));
    let int = 123_456i32.to_be_bytes();
    let text = b"user123".to_vec();
    let mut out = Vec::with_capacity(1 << 16);
    g.bench_function("encode_int4", |b| {
        b.iter(|| {
            out.clear();
            write_value(&mut out, &Type::INT4, Some(&int)).is_ok()
        })
    });
    g.bench_function("encode_text", |b| {
        b.iter(|| {
            out.clear();
            write_value(&mut out, &Type::TEXT, Some(&text)).is_ok()
        })
    });
    // The seed's row shape (id int4, name text), 10 rows: one `LIMIT 10` result.
    g.throughput(Throughput::Elements(10));
    g.bench_function("encode_10_rows_int4_text", |b| {
        b.iter(|| {
            out.clear();
            out.push(b'[');
            for i in 0..10 {
                if i > 0 {
                    out.push(b',');
                }
                out.push(b'[');
                let _ = write_value(&mut out, &Type::INT4, Some(&int));
                out.push(b',');
                let _ = write_value(&mut out, &Type::TEXT, Some(&text));
                out.push(b']');
            }
            out.push(b']');
            out.len()
        })
    });
    // The same rows as DataRow messages, written by column: one statement of a grouped
    // `column_major` pipeline (`pg::by_column`).
    let rows: Vec<DataRowBody> = (0..10).map(|i| data_row(123_450 + i, &text)).collect();
    let mut writer = ColumnWriter::named(vec![("id", &Type::INT4), ("name", &Type::TEXT)]);
    g.bench_function("write_10_rows_by_column_int4_text", |b| {
        b.iter(|| {
            rows.iter().for_each(|row| writer.push(row));
            writer.finish().map(|w| w.size()).ok()
        })
    });
    let raw: Box<serde_json::value::RawValue> = serde_json::from_str("\"10\"").unwrap();
    g.throughput(Throughput::Elements(1));
    g.bench_function("param_text_string_for_int8", |b| {
        b.iter(|| param_text(&raw, &Type::INT8).is_ok())
    });
    g.finish();
}

fn catalog(c: &mut Criterion) {
    let mut g = c.benchmark_group("catalog");
    let cache = StatementCache::new(4096, Arc::new(HandleGen::new(0xabc)));
    let shape = || Shape {
        params: vec![Type::INT8],
        columns: vec![("id".into(), Type::INT4), ("name".into(), Type::TEXT)],
    };
    for i in 0..1000 {
        cache.insert(
            &format!("SELECT id, name FROM users WHERE id = $1 -- {i}"),
            shape(),
        );
    }
    let sql = "SELECT id, name FROM users LIMIT $1";
    let entry = cache.insert(sql, shape());
    let handle = entry.handle.to_string();
    g.throughput(Throughput::Elements(1));
    g.bench_function("hit_by_sql", |b| b.iter(|| cache.get_by_sql(sql).is_some()));
    g.bench_function("hit_by_handle", |b| {
        b.iter(|| cache.get_by_handle(&handle).is_some())
    });
    g.bench_function("miss", |b| {
        b.iter(|| cache.get_by_sql("SELECT 42").is_some())
    });
    g.finish();
}

criterion_group!(benches, codec, values, catalog);
criterion_main!(benches);
