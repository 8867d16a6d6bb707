//! What the AI layer collected: the samples its modules train on, one JSON body per row
//! (the module's own sample type; the store does not know it), by scope (the container a
//! module runs for) and time.

use rusqlite::params;

use crate::{Durability, Result, Store};

pub(crate) const MIGRATION: &str = "
    CREATE TABLE ai_samples (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        module TEXT NOT NULL, scope TEXT NOT NULL, ts INTEGER NOT NULL, body TEXT NOT NULL
    );
    CREATE INDEX ai_samples_scope ON ai_samples (module, scope, seq);";

impl Store {
    /// Appends samples (unix ms, JSON body) of `module` for `scope`, keeping only the newest
    /// `keep` of that scope. [`Durability::Committed`]: samples are observed, not
    /// acknowledged, and a power cut costs only the last few.
    pub fn add_ai_samples(&self, module: &str, scope: &str, rows: &[(i64, String)], keep: usize) -> Result<()> {
        self.write(Durability::Committed, |tx| {
            let mut stmt =
                tx.prepare_cached("INSERT INTO ai_samples (module, scope, ts, body) VALUES (?1, ?2, ?3, ?4)")?;
            for (ts, body) in rows {
                stmt.execute(params![module, scope, ts, body])?;
            }
            tx.execute(
                "DELETE FROM ai_samples WHERE module = ?1 AND scope = ?2 AND seq <= \
                 (SELECT seq FROM ai_samples WHERE module = ?1 AND scope = ?2 ORDER BY seq DESC LIMIT 1 OFFSET ?3)",
                params![module, scope, keep as i64],
            )?;
            Ok(())
        })
    }

    /// The newest `limit` samples of `module` for `scope`, oldest first.
    pub fn ai_samples(&self, module: &str, scope: &str, limit: usize) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT body FROM (SELECT seq, body FROM ai_samples WHERE module = ?1 AND scope = ?2 \
             ORDER BY seq DESC LIMIT ?3) ORDER BY seq",
        )?;
        let rows = stmt.query_map(params![module, scope, limit as i64], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// How many samples of `module` are kept for `scope`.
    pub fn ai_sample_count(&self, module: &str, scope: &str) -> Result<u64> {
        let n: i64 = self.conn().query_row(
            "SELECT COUNT(*) FROM ai_samples WHERE module = ?1 AND scope = ?2",
            params![module, scope],
            |r| r.get(0),
        )?;
        Ok(n.max(0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use crate::Store;

    #[test]
    fn samples_are_kept_newest_first_and_trimmed() {
        let s = Store::open_in_memory().unwrap();
        let rows: Vec<(i64, String)> = (0..10).map(|i| (i, format!("{{\"i\":{i}}}"))).collect();
        s.add_ai_samples("transaction", "a", &rows, 6).unwrap();
        s.add_ai_samples("transaction", "b", &rows[..2], 6).unwrap();
        assert_eq!(s.ai_sample_count("transaction", "a").unwrap(), 6);
        assert_eq!(s.ai_sample_count("transaction", "b").unwrap(), 2);
        let last3 = s.ai_samples("transaction", "a", 3).unwrap();
        assert_eq!(last3, vec!["{\"i\":7}", "{\"i\":8}", "{\"i\":9}"]);
        assert!(s.ai_samples("mining", "a", 3).unwrap().is_empty());
    }
}
