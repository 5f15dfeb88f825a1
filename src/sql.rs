//! Just enough SQL lexing to classify a statement by its leading keywords: the command tag the
//! daemon reports (tokio-postgres does not expose PostgreSQL's own tag), transaction-control
//! statements that must go through the ops, and statements that leave session state behind.

/// What the daemon needs to know about one statement's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    /// Leading keyword(s) as in PostgreSQL's command tag, e.g. "SELECT", "INSERT", "CREATE TABLE".
    pub verb: String,
    /// BEGIN/COMMIT/ROLLBACK/…: refused as a statement (the ops own transactions).
    pub transaction_control: bool,
    /// SET/RESET/LISTEN/DECLARE/CREATE TABLE (temp tables) outside a transaction: the pooled
    /// connection's session must be reset afterwards.
    pub leaves_session_state: bool,
}

/// Tags whose row count PostgreSQL appends (`SELECT 3`, `UPDATE 2`); INSERT also has `0 `.
const COUNTED: &[&str] = &[
    "SELECT", "UPDATE", "DELETE", "MERGE", "FETCH", "MOVE", "COPY",
];
/// First keywords whose tag has a second word (`CREATE TABLE`, `DROP INDEX`).
const TWO_WORD: &[&str] = &[
    "CREATE", "DROP", "ALTER", "DECLARE", "GRANT", "REVOKE", "COMMENT", "SECURITY", "IMPORT",
    "REFRESH",
];

impl Classified {
    /// The command tag for a statement that affected (or returned) `rows` rows.
    pub fn tag(&self, rows: u64) -> String {
        let mut n = itoa::Buffer::new();
        if self.verb == "INSERT" {
            format!("INSERT 0 {}", n.format(rows))
        } else if COUNTED.contains(&self.verb.as_str()) {
            format!("{} {}", self.verb, n.format(rows))
        } else {
            self.verb.clone()
        }
    }
}

/// Classifies `sql` by its leading keywords (comments and whitespace skipped; for `WITH …` the
/// main statement after the common table expressions; `VALUES` and `TABLE` count as SELECT).
pub fn classify(sql: &str) -> Classified {
    let words = leading_words(sql, 3);
    let first = words.first().cloned().unwrap_or_default();
    let second = words.get(1).cloned().unwrap_or_default();
    let verb = match first.as_str() {
        "WITH" => main_verb_after_with(sql).unwrap_or_else(|| "SELECT".into()),
        "VALUES" | "TABLE" | "(" => "SELECT".into(),
        "START" => "START TRANSACTION".into(),
        "CREATE" | "DROP" | "ALTER" => {
            // CREATE [OR REPLACE] [TEMP|TEMPORARY|UNLOGGED|UNIQUE|…] TABLE → CREATE TABLE
            let skip = [
                "OR",
                "REPLACE",
                "TEMP",
                "TEMPORARY",
                "UNLOGGED",
                "GLOBAL",
                "LOCAL",
                "UNIQUE",
                "MATERIALIZED",
                "RECURSIVE",
                "TRUSTED",
                "PROCEDURAL",
                "CONSTRAINT",
                "DEFAULT",
            ];
            let more = leading_words(sql, 8);
            let object = more
                .iter()
                .skip(1)
                .find(|w| !skip.contains(&w.as_str()))
                .cloned()
                .unwrap_or_default();
            let materialized = more.iter().any(|w| w == "MATERIALIZED");
            match (object.as_str(), materialized) {
                ("VIEW", true) => format!("{first} MATERIALIZED VIEW"),
                ("", _) => first.clone(),
                _ => format!("{first} {object}"),
            }
        }
        w if TWO_WORD.contains(&w) && !second.is_empty() => {
            if w == "DECLARE" {
                "DECLARE CURSOR".into()
            } else {
                format!("{first} {second}")
            }
        }
        _ => first.clone(),
    };
    let transaction_control = match first.as_str() {
        "BEGIN" | "START" | "END" | "ABORT" => true,
        "COMMIT" | "ROLLBACK" => {
            // COMMIT PREPARED / ROLLBACK PREPARED (two-phase) and ROLLBACK TO [SAVEPOINT] are fine.
            second != "PREPARED" && second != "TO"
        }
        "PREPARE" => second == "TRANSACTION",
        _ => false,
    };
    let temp_table = (first == "CREATE" || first == "SELECT")
        && leading_words(sql, 4)
            .iter()
            .any(|w| w == "TEMP" || w == "TEMPORARY");
    let leaves_session_state = matches!(
        first.as_str(),
        "SET" | "RESET" | "LISTEN" | "DECLARE" | "DISCARD" | "LOAD"
    ) || temp_table
        || (first == "SELECT"
            && (contains_ignore_ascii_case(sql, "set_config")
                // Session-level advisory locks (not the `_xact_` ones, which end with the
                // statement's own transaction).
                || contains_ignore_ascii_case(sql, "pg_advisory_lock")
                || contains_ignore_ascii_case(sql, "pg_try_advisory_lock")));
    Classified {
        verb,
        transaction_control,
        leaves_session_state,
    }
}

fn contains_ignore_ascii_case(haystack: &str, needle: &str) -> bool {
    haystack
        .as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// The first `n` keywords of `sql`, upper-cased, skipping whitespace and comments. An opening
/// parenthesis counts as the word "(".
fn leading_words(sql: &str, n: usize) -> Vec<String> {
    let mut words = Vec::with_capacity(n);
    let b = sql.as_bytes();
    let mut i = 0;
    while i < b.len() && words.len() < n {
        match b[i] {
            c if c.is_ascii_whitespace() || c == b';' => i += 1,
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => i = skip_block_comment(b, i),
            b'(' => {
                words.push("(".into());
                i += 1;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                words.push(sql[start..i].to_ascii_uppercase());
            }
            _ => break,
        }
    }
    words
}

/// Index just past a (possibly nested) `/* … */` comment starting at `i`.
fn skip_block_comment(b: &[u8], mut i: usize) -> usize {
    let mut depth = 0usize;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            depth += 1;
            i += 2;
        } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    i
}

/// For `WITH a AS (…), b AS (…) <verb> …`: the first keyword at parenthesis depth 0 that starts a
/// statement, skipping quoted strings, identifiers and comments.
fn main_verb_after_with(sql: &str) -> Option<String> {
    const VERBS: &[&str] = &[
        "SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "VALUES", "TABLE",
    ];
    let b = sql.as_bytes();
    let mut i = 0;
    let mut depth = 0i32;
    let mut seen_with = false;
    while i < b.len() {
        match b[i] {
            b'(' => {
                depth += 1;
                i += 1;
            }
            b')' => {
                depth -= 1;
                i += 1;
            }
            q @ (b'\'' | b'"') => {
                i += 1;
                while i < b.len() && b[i] != q {
                    i += 1;
                }
                i += 1;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => i = skip_block_comment(b, i),
            c if c.is_ascii_alphabetic() => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                let word = sql[start..i].to_ascii_uppercase();
                if depth == 0 {
                    if !seen_with && word == "WITH" {
                        seen_with = true;
                    } else if VERBS.contains(&word.as_str()) {
                        return Some(match word.as_str() {
                            "VALUES" | "TABLE" => "SELECT".into(),
                            _ => word,
                        });
                    }
                }
            }
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags() {
        assert_eq!(classify("select 1").tag(1), "SELECT 1");
        assert_eq!(
            classify("  -- hi\n INSERT INTO t VALUES (1)").tag(1),
            "INSERT 0 1"
        );
        assert_eq!(
            classify("/* a /* nested */ */ update t set a=1").tag(4),
            "UPDATE 4"
        );
        assert_eq!(classify("create table t (a int)").tag(0), "CREATE TABLE");
        assert_eq!(
            classify("CREATE TEMP TABLE t (a int)").tag(0),
            "CREATE TABLE"
        );
        assert_eq!(
            classify("create or replace view v as select 1").tag(0),
            "CREATE VIEW"
        );
        assert_eq!(
            classify("create unique index i on t(a)").tag(0),
            "CREATE INDEX"
        );
        assert_eq!(classify("drop table t").tag(0), "DROP TABLE");
        assert_eq!(classify("VALUES (1),(2)").tag(2), "SELECT 2");
        assert_eq!(classify("(select 1)").tag(1), "SELECT 1");
        assert_eq!(classify("truncate t").tag(0), "TRUNCATE");
        assert_eq!(
            classify("with x as (select 1), y as (delete from t returning *) insert into u select * from x").tag(3),
            "INSERT 0 3"
        );
        assert_eq!(
            classify("WITH x AS (SELECT ')') SELECT * FROM x").tag(1),
            "SELECT 1"
        );
    }

    #[test]
    fn transaction_control() {
        for sql in [
            "BEGIN",
            "begin isolation level serializable",
            "START TRANSACTION",
            "commit",
            "END",
            "ROLLBACK",
            "abort",
            "PREPARE TRANSACTION 'x'",
        ] {
            assert!(classify(sql).transaction_control, "{sql}");
        }
        for sql in [
            "ROLLBACK TO SAVEPOINT a",
            "rollback to a",
            "SAVEPOINT a",
            "COMMIT PREPARED 'x'",
            "select 'begin'",
        ] {
            assert!(!classify(sql).transaction_control, "{sql}");
        }
    }

    #[test]
    fn session_state() {
        for sql in [
            "SET search_path = x",
            "reset all",
            "LISTEN ch",
            "declare c cursor with hold for select 1",
            "create temporary table t (a int)",
            "select set_config('a.b', '1', false)",
            "SELECT pg_advisory_lock(42)",
            "select pg_try_advisory_lock_shared(1, 2)",
        ] {
            assert!(classify(sql).leaves_session_state, "{sql}");
        }
        for sql in [
            "select 1",
            "SELECT pg_advisory_xact_lock(42)",
            "create table t (a int)",
            "insert into t values (1)",
        ] {
            assert!(!classify(sql).leaves_session_state, "{sql}");
        }
    }
}
