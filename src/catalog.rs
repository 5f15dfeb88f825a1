//! The statement catalogue: one per upstream, shared by every client process.
//!
//! Key = exact SQL text (the upstream is implied: each upstream owns its catalogue). Lookups hash
//! the text, and a hash match is confirmed by comparing the text itself (`HashMap` semantics), so
//! a collision can never run the wrong statement. Entries carry a **handle**: a string unique
//! across every upstream and every daemon start (`h<epoch>-<n>`), so a handle can only resolve in
//! the catalogue that issued it, and a handle from before a restart never aliases a new one.
//!
//! The catalogue holds statement *descriptions*; the tokio-postgres `Statement`s live on each
//! physical connection (see `pg::conn`) and are prepared lazily there, keyed by [`Entry::id`].
//! Invariants: an entry is in `by_handle` iff it is in the LRU; an evicted entry is marked
//! (`is_evicted`) so connections can drop their copies. The lock is never held across an await.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use foldhash::fast::RandomState;
use lru::LruCache;
use tokio_postgres::types::Type;

use crate::sql::{classify, Classified};

/// Issues handles unique across all upstreams of this daemon process and across restarts.
#[derive(Debug)]
pub struct HandleGen {
    epoch: u32,
    next: AtomicU64,
}

impl HandleGen {
    /// `epoch` should differ between daemon starts (the start time works).
    pub fn new(epoch: u32) -> Self {
        HandleGen {
            epoch,
            next: AtomicU64::new(1),
        }
    }

    /// A generator seeded from the current time.
    pub fn from_clock() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        // Mix seconds and sub-second parts so two starts within a second still differ.
        Self::new((nanos as u64 ^ (nanos >> 64) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) as u32)
    }

    fn issue(&self) -> (u64, Arc<str>) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        (n, Arc::from(format!("h{:08x}-{n}", self.epoch)))
    }
}

/// What a prepared statement takes and returns.
#[derive(Debug, Clone)]
pub struct Shape {
    pub params: Vec<Type>,
    pub columns: Vec<(String, Type)>,
}

impl Shape {
    pub fn of(stmt: &tokio_postgres::Statement) -> Shape {
        Shape {
            params: stmt.params().to_vec(),
            columns: stmt
                .columns()
                .iter()
                .map(|c| (c.name().to_string(), c.type_().clone()))
                .collect(),
        }
    }
}

/// One catalogued statement.
#[derive(Debug)]
pub struct Entry {
    /// Unique per daemon process; the key of per-connection prepared statements.
    pub id: u64,
    pub handle: Arc<str>,
    pub sql: Arc<str>,
    /// The statement's verb and session effects, worked out once.
    pub class: Classified,
    shape: RwLock<Arc<Shape>>,
    uses: AtomicU64,
    evicted: AtomicBool,
}

impl Entry {
    pub fn shape(&self) -> Arc<Shape> {
        match self.shape.read() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the description after a schema change re-prepared the statement.
    pub fn set_shape(&self, shape: Shape) {
        let shape = Arc::new(shape);
        match self.shape.write() {
            Ok(mut s) => *s = shape,
            Err(poisoned) => *poisoned.into_inner() = shape,
        }
    }

    pub fn uses(&self) -> u64 {
        self.uses.load(Ordering::Relaxed)
    }

    pub fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::Relaxed)
    }
}

/// Counters, for stats and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    pub entries: usize,
    pub capacity: usize,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
}

struct Inner {
    by_sql: LruCache<Arc<str>, Arc<Entry>, RandomState>,
    by_handle: HashMap<Arc<str>, Arc<Entry>, RandomState>,
}

/// The bounded, shared statement catalogue of one upstream.
pub struct StatementCache {
    inner: Mutex<Inner>,
    handles: Arc<HandleGen>,
    capacity: usize,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
}

impl std::fmt::Debug for StatementCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatementCache")
            .field("stats", &self.stats())
            .finish()
    }
}

impl StatementCache {
    pub fn new(capacity: usize, handles: Arc<HandleGen>) -> Self {
        let capacity = capacity.max(1);
        let cap = std::num::NonZeroUsize::new(capacity).unwrap_or(std::num::NonZeroUsize::MIN);
        StatementCache {
            inner: Mutex::new(Inner {
                by_sql: LruCache::with_hasher(cap, RandomState::default()),
                by_handle: HashMap::with_hasher(RandomState::default()),
            }),
            handles,
            capacity,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the maps inconsistent in a way that
        // matters more than losing the catalogue, so recover the guard.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Looks a statement up by its exact SQL text, counting a hit or a miss.
    pub fn get_by_sql(&self, sql: &str) -> Option<Arc<Entry>> {
        let found = self.lock().by_sql.get(sql).cloned();
        self.count(found.as_ref());
        found
    }

    /// Looks a statement up by handle (refreshing its recency), counting a hit or a miss.
    pub fn get_by_handle(&self, handle: &str) -> Option<Arc<Entry>> {
        let found = {
            let mut inner = self.lock();
            let entry = inner.by_handle.get(handle).cloned();
            if let Some(e) = &entry {
                inner.by_sql.promote(&*e.sql);
            }
            entry
        };
        self.count(found.as_ref());
        found
    }

    /// Looks a handle up without counting it or refreshing its recency.
    pub fn peek_by_handle(&self, handle: &str) -> Option<Arc<Entry>> {
        self.lock().by_handle.get(handle).cloned()
    }

    fn count(&self, found: Option<&Arc<Entry>>) {
        match found {
            Some(e) => {
                e.uses.fetch_add(1, Ordering::Relaxed);
                self.hits.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Adds a statement (or returns the entry another client added first), evicting the least
    /// recently used one when full.
    pub fn insert(&self, sql: &str, shape: Shape) -> Arc<Entry> {
        let mut inner = self.lock();
        if let Some(existing) = inner.by_sql.get(sql) {
            return existing.clone();
        }
        let (id, handle) = self.handles.issue();
        let entry = Arc::new(Entry {
            id,
            handle: handle.clone(),
            sql: Arc::from(sql),
            class: classify(sql),
            shape: RwLock::new(Arc::new(shape)),
            uses: AtomicU64::new(1),
            evicted: AtomicBool::new(false),
        });
        if let Some((_, old)) = inner.by_sql.push(entry.sql.clone(), entry.clone()) {
            // `push` returns the evicted LRU entry (never the same key: we checked above).
            old.evicted.store(true, Ordering::Relaxed);
            inner.by_handle.remove(&old.handle);
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
        inner.by_handle.insert(handle, entry.clone());
        entry
    }

    /// Empties the catalogue (connections drop their statements lazily).
    pub fn flush(&self) -> usize {
        let mut inner = self.lock();
        let n = inner.by_sql.len();
        for (_, e) in inner.by_sql.iter() {
            e.evicted.store(true, Ordering::Relaxed);
        }
        inner.by_sql.clear();
        inner.by_handle.clear();
        n
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            entries: self.lock().by_sql.len(),
            capacity: self.capacity,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
        }
    }

    /// The `n` most used entries, most used first.
    pub fn top(&self, n: usize) -> Vec<Arc<Entry>> {
        let mut all: Vec<Arc<Entry>> = self.lock().by_sql.iter().map(|(_, e)| e.clone()).collect();
        all.sort_by_key(|e| std::cmp::Reverse(e.uses()));
        all.truncate(n);
        all
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> Shape {
        Shape {
            params: vec![Type::INT4],
            columns: vec![("id".into(), Type::INT4)],
        }
    }

    fn cache(cap: usize) -> StatementCache {
        StatementCache::new(cap, Arc::new(HandleGen::new(0xabc)))
    }

    #[test]
    fn insert_then_hit_by_sql_and_handle() {
        let c = cache(4);
        assert!(c.get_by_sql("SELECT 1").is_none());
        let e = c.insert("SELECT 1", shape());
        assert_eq!(&*e.handle, "h00000abc-1");
        assert_eq!(c.get_by_sql("SELECT 1").unwrap().id, e.id);
        assert_eq!(c.get_by_handle(&e.handle).unwrap().id, e.id);
        let s = c.stats();
        assert_eq!((s.entries, s.hits, s.misses, s.evictions), (1, 2, 1, 0));
    }

    #[test]
    fn exact_text_is_the_key() {
        let c = cache(4);
        let a = c.insert("SELECT 1", shape());
        let b = c.insert("SELECT  1", shape());
        assert_ne!(a.id, b.id);
        assert_eq!(
            c.insert("SELECT 1", shape()).id,
            a.id,
            "second insert returns the first"
        );
    }

    #[test]
    fn lru_eviction_drops_handle_and_marks_entry() {
        let c = cache(2);
        let a = c.insert("a", shape());
        let b = c.insert("b", shape());
        c.get_by_handle(&a.handle); // a is now more recent than b
        let _ = c.insert("c", shape());
        assert!(b.is_evicted());
        assert!(c.get_by_handle(&b.handle).is_none());
        assert!(c.get_by_sql("a").is_some());
        assert_eq!(c.stats().evictions, 1);
        assert_eq!(c.stats().entries, 2);
    }

    #[test]
    fn handles_are_unique_across_caches_sharing_a_generator() {
        let gen = Arc::new(HandleGen::new(7));
        let one = StatementCache::new(4, gen.clone());
        let two = StatementCache::new(4, gen);
        let a = one.insert("SELECT 1", shape());
        let b = two.insert("SELECT 1", shape());
        assert_ne!(a.handle, b.handle);
        assert!(two.get_by_handle(&a.handle).is_none());
    }

    #[test]
    fn flush_and_top() {
        let c = cache(8);
        let a = c.insert("a", shape());
        c.insert("b", shape());
        c.get_by_sql("a");
        assert_eq!(c.top(1)[0].id, a.id);
        assert_eq!(c.flush(), 2);
        assert!(a.is_evicted());
        assert_eq!(c.stats().entries, 0);
    }

    #[test]
    fn shape_can_be_replaced() {
        let c = cache(2);
        let a = c.insert("a", shape());
        a.set_shape(Shape {
            params: vec![],
            columns: vec![],
        });
        assert!(c.get_by_sql("a").unwrap().shape().columns.is_empty());
    }
}
