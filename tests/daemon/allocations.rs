//! What the hot path costs in memory, without PostgreSQL. The catalogue's hit path allocates
//! nothing: a statement found by its SQL text or by its handle costs a lookup and a reference
//! count, whatever the client sent (counted with this test binary's global allocator, per
//! thread, so concurrent tests do not disturb the count). And a query's future, which is boxed
//! once per request (`ipc::session`), carries no room for the rare or heavy paths.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Arc;

use qail_daemon::catalog::{HandleGen, Shape, StatementCache};
use qail_daemon::config::Config;
use qail_daemon::ipc::ops::{run_sql, Op};
use qail_daemon::ipc::reply::Reply;
use qail_daemon::ipc::request::{parse, Target};
use qail_daemon::pg::exec::lookup;
use qail_daemon::upstream::Upstream;
use tokio_postgres::types::Type;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The system allocator, counting the allocations of each thread.
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    ALLOCATIONS.with(|n| n.set(n.get() + 1));
}

// SAFETY: every call is passed on unchanged to the system allocator; counting touches only a
// thread-local `Cell`, which neither allocates nor unwinds.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// How many allocations `f` made on this thread.
fn allocations<T>(f: impl FnOnce() -> T) -> (u64, T) {
    let before = ALLOCATIONS.with(Cell::get);
    let out = f();
    (ALLOCATIONS.with(Cell::get) - before, out)
}

fn shape() -> Shape {
    Shape {
        params: vec![Type::INT4],
        columns: vec![("id".into(), Type::INT4), ("name".into(), Type::TEXT)],
    }
}

const SQL: &str = "SELECT id, name FROM users LIMIT $1";

#[test]
fn a_catalogue_hit_allocates_nothing() {
    let cache = StatementCache::new(1024, Arc::new(HandleGen::new(7)));
    for i in 0..500 {
        cache.insert(&format!("SELECT {i} FROM users WHERE id = $1"), shape());
    }
    let handle = cache.insert(SQL, shape()).handle.to_string();

    let (n, hit) = allocations(|| cache.get_by_sql(SQL));
    assert!(hit.is_some());
    assert_eq!(n, 0, "a hit by SQL text allocated {n} times");
    let (n, hit) = allocations(|| cache.get_by_handle(&handle));
    assert!(hit.is_some());
    assert_eq!(n, 0, "a hit by handle allocated {n} times");
    // The counter sees what a miss does, so a zero above is not for want of counting.
    let (n, miss) = allocations(|| cache.insert("SELECT 1", shape()));
    assert!(n > 0 && miss.sql.as_ref() == "SELECT 1");
}

/// An upstream that is never connected: building one opens no connection.
fn upstream() -> Arc<Upstream> {
    let config = Config::from_toml_str(
        r#"
        [ipc]
        socket = "/tmp/qail-alloc-test/q.sock"
        [[upstreams]]
        name = "main"
        user = "app"
        password = "pw"
        "#,
        &HashMap::new(),
    )
    .unwrap();
    Upstream::new(
        config.upstreams[0].clone(),
        64,
        Arc::new(HandleGen::new(7)),
        TaskTracker::new(),
        CancellationToken::new(),
        None,
    )
}

#[tokio::test]
async fn a_request_finds_its_catalogued_statement_without_allocating() {
    let up = upstream();
    let handle = up.catalog.insert(SQL, shape()).handle.to_string();

    let (n, found) = allocations(|| lookup(&up, Target::Sql(SQL)));
    assert!(matches!(found, Ok(Some(_))));
    assert_eq!(n, 0, "looking SQL up allocated {n} times");
    let (n, found) = allocations(|| lookup(&up, Target::Handle(&handle)));
    assert!(matches!(found, Ok(Some(_))));
    assert_eq!(n, 0, "looking a handle up allocated {n} times");
}

/// Waiting for the pool, cancelling after a timeout, preparing, pipelines and batches are
/// boxed on their own when they happen, so a query's future does not allocate and copy room
/// for them (it took 9.1 KiB in a debug build before; about 2.6 KiB now).
#[tokio::test]
async fn a_query_future_carries_no_room_for_rare_paths() {
    let up = upstream();
    let req = parse(br#"{"id":1,"op":"query","sql":"SELECT 1"}"#).unwrap();
    let mut reply = Reply::new(None);
    let work = run_sql(Op::Query, &up, None, &req, None, &mut reply);
    let size = std::mem::size_of_val(&work);
    assert!(size <= 4096, "run_sql's future takes {size} bytes");
}
