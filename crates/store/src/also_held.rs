//! Which candidates another box holds too: what a box learns from `Hallrelay-Also-Held`.
//!
//! Boxes never talk to each other. A candidate's client in two-box mode writes each save to
//! two boxes and tells each, with every PUT, the pin of the other box that acknowledged its
//! newest save. The box keeps, per (exam, candidate), the last such pin, the seq and the time
//! it was told, in the `also_held` table, in the same transaction as the save: the console
//! can then say how many of its candidates are not held by it alone. A candidate's PUT
//! without the header clears the row (that candidate's newest save is held by this box only,
//! as far as its client knows); a refused PUT changes nothing.
//!
//! The table was added after schema version 1 without a bump: redb creates it in the first
//! write transaction that opens it, and a store without it has no candidate noted.

use redb::{ReadTransaction, ReadableTable, Table};

use crate::StoreError;
use hallrelay_protocol::ids::AutosaveName;
use hallrelay_protocol::timefmt::{from_unix_millis, rfc3339};

pub use crate::schema::ALSO_HELD;

/// What a candidate's PUT says about another box holding its saves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AlsoHeld {
    /// Not a candidate's PUT at a box (the cloud, a box's replay, an import): nothing noted.
    #[default]
    Unchanged,
    /// `Hallrelay-Also-Held` named this pin.
    By(String),
    /// A candidate's PUT without the header.
    Alone,
}

/// One candidate another box holds too.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AlsoHeldRow {
    pub exam: String,
    pub candidate: String,
    /// The other box's pin.
    pub pin: String,
    /// The seq of the save whose PUT named it.
    pub seq: u64,
    /// When, RFC 3339.
    pub at: String,
}

/// Applies what an accepted PUT of `name` said, in the batch's transaction.
pub(crate) fn note(
    table: &mut Table<'_, (&'static str, &'static str), (&'static str, u64, u64)>,
    name: &AutosaveName,
    said: &AlsoHeld,
    at_ms: u64,
) -> Result<(), StoreError> {
    let key = (name.exam.as_str(), name.candidate.as_str());
    match said {
        AlsoHeld::Unchanged => {}
        AlsoHeld::By(pin) => {
            // A retry of an older save does not take the row back in time.
            let newer = table.get(key)?.is_none_or(|row| row.value().1 <= name.seq);
            if newer {
                table.insert(key, (pin.as_str(), name.seq, at_ms))?;
            }
        }
        AlsoHeld::Alone => {
            let older = table.get(key)?.is_some_and(|row| row.value().1 <= name.seq);
            if older {
                table.remove(key)?;
            }
        }
    }
    Ok(())
}

impl crate::Store {
    /// Every candidate another box holds too, as their clients said, by exam and candidate.
    pub async fn also_held(&self) -> Result<Vec<AlsoHeldRow>, StoreError> {
        self.read(|db, _| rows(&redb::ReadableDatabase::begin_read(db)?))
            .await
    }
}

/// What [`crate::Store::verify`] checks of the table: each row is a candidate who saved here
/// (has a receipt chain), and names a pin.
pub(crate) fn check(read: &ReadTransaction, problems: &mut Vec<String>) -> Result<(), StoreError> {
    let chains = read.open_table(crate::schema::CHAINS)?;
    for row in rows(read)? {
        if chains
            .get((row.exam.as_str(), row.candidate.as_str()))?
            .is_none()
        {
            problems.push(format!(
                "{}/{} is noted as also held by {} but never saved here",
                row.exam, row.candidate, row.pin
            ));
        }
        if let Err(e) = hallrelay_protocol::pin::check_pin(&row.pin) {
            problems.push(format!("{}/{}: also held by {e}", row.exam, row.candidate));
        }
    }
    Ok(())
}

/// Every candidate noted, by exam and candidate.
pub(crate) fn rows(read: &ReadTransaction) -> Result<Vec<AlsoHeldRow>, StoreError> {
    let table = match read.open_table(ALSO_HELD) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for row in table.iter()? {
        let (key, value) = row?;
        let (exam, candidate) = key.value();
        let (pin, seq, at_ms) = value.value();
        out.push(AlsoHeldRow {
            exam: exam.to_owned(),
            candidate: candidate.to_owned(),
            pin: pin.to_owned(),
            seq,
            at: rfc3339(from_unix_millis(at_ms)),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PutOutcome, put_for_test};

    const PIN_B: &str = "sha256//BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBA=";
    const PIN_C: &str = "sha256//CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCA=";

    fn put(candidate: &str, seq: u64, said: AlsoHeld) -> crate::PutRequest {
        let mut request = put_for_test(candidate, seq, &format!("save {seq}"), false);
        request.also_held = said;
        request
    }

    /// A PUT naming another box notes it; a later one without the header clears it; a retry
    /// of an older save does not move the row back; a refused PUT changes nothing; a PUT that
    /// is not a candidate's at a box leaves it alone. The row survives a reopening.
    #[tokio::test]
    async fn the_other_box_is_noted_per_candidate_and_cleared_when_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::open_for_test(dir.path());
        assert!(store.also_held().await.unwrap().is_empty());
        store.put(put("c1", 1, AlsoHeld::Alone)).await.unwrap();
        store
            .put(put("c1", 2, AlsoHeld::By(PIN_B.into())))
            .await
            .unwrap();
        store
            .put(put("c2", 1, AlsoHeld::By(PIN_C.into())))
            .await
            .unwrap();
        let rows = store.also_held().await.unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (
                rows[0].candidate.as_str(),
                rows[0].pin.as_str(),
                rows[0].seq
            ),
            ("c1", PIN_B, 2)
        );
        assert_eq!(
            (rows[1].candidate.as_str(), rows[1].pin.as_str()),
            ("c2", PIN_C)
        );

        // A retry of save 1 (same bytes) without the header: older than the row, kept.
        let retry = store.put(put("c1", 1, AlsoHeld::Alone)).await.unwrap();
        assert!(matches!(retry, PutOutcome::Duplicate(_)));
        assert_eq!(store.also_held().await.unwrap().len(), 2);
        // Different bytes under a stored name: refused, nothing noted.
        let mut conflict = put_for_test("c2", 1, "other bytes", false);
        conflict.also_held = AlsoHeld::Alone;
        assert!(matches!(
            store.put(conflict).await.unwrap(),
            PutOutcome::Conflict { .. }
        ));
        // Not a candidate's PUT at a box.
        store.put(put("c2", 2, AlsoHeld::Unchanged)).await.unwrap();
        assert_eq!(store.also_held().await.unwrap().len(), 2);
        // The candidate's newest save came alone: c1 is held here only.
        store.put(put("c1", 3, AlsoHeld::Alone)).await.unwrap();
        let rows = store.also_held().await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].candidate, "c2");
        store.close().await;
        drop(store);

        let store = crate::open_for_test(dir.path());
        assert_eq!(store.also_held().await.unwrap().len(), 1);
        let integrity = store.verify().await.unwrap();
        assert!(integrity.problems.is_empty(), "{:?}", integrity.problems);
    }
}
