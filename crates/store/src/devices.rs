//! The devices each candidate saved from, and the device rule
//! ([`hallrelay_protocol::v1::devices`]): a device another one took over from is refused
//! from the seq the other started at, so two laptops of one candidate never collide on a seq.
//!
//! `devices`: (exam, candidate, device) → (first seq, refusals). The check and the recording
//! run inside the writer's batch transaction, after the duplicate check and before the
//! conflict check ([`crate::writer`]): two saves of one candidate in one batch see each
//! other's rows, so the rule holds however the requests interleave. Rows are a few dozen
//! bytes per device and are kept for the life of the store (retention purges saves, not
//! devices: a device that comes back after its saves were purged is still refused).
//! `stats.continued_elsewhere` counts every refusal, in the same transactions.

use std::collections::BTreeMap;

use redb::{ReadTransaction, ReadableTable, Table};
use serde::Serialize;

use crate::StoreError;
use crate::schema::DEVICES;

/// One device row's value: its first seq, and how many of its saves were refused.
type Row = (u64, u64);

/// The seq from which device `device` of (`exam`, `candidate`) is refused at `seq`: the
/// first seq of a device that took over from it, if `seq` is at or past it. `None`: the save
/// may go on (a new device, or one no other took over from yet).
pub(crate) fn took_over_at(
    table: &Table<'_, (&'static str, &'static str, &'static str), Row>,
    exam: &str,
    candidate: &str,
    device: &str,
    seq: u64,
) -> Result<Option<u64>, StoreError> {
    let Some(mine) = table.get((exam, candidate, device))?.map(|v| v.value().0) else {
        return Ok(None);
    };
    let mut earliest: Option<u64> = None;
    for row in table.range((exam, candidate, "")..)? {
        let (key, value) = row?;
        let (e, c, other) = key.value();
        if (e, c) != (exam, candidate) {
            break;
        }
        let first = value.value().0;
        if other != device && first > mine && seq >= first {
            earliest = Some(earliest.map_or(first, |f: u64| f.min(first)));
        }
    }
    Ok(earliest)
}

/// Records that `device` saved `seq` (its first seq, if it is new).
pub(crate) fn saw(
    table: &mut Table<'_, (&'static str, &'static str, &'static str), Row>,
    exam: &str,
    candidate: &str,
    device: &str,
    seq: u64,
) -> Result<(), StoreError> {
    if table.get((exam, candidate, device))?.is_none() {
        table.insert((exam, candidate, device), (seq, 0))?;
    }
    Ok(())
}

/// Counts a refusal of `device`.
pub(crate) fn refused(
    table: &mut Table<'_, (&'static str, &'static str, &'static str), Row>,
    exam: &str,
    candidate: &str,
    device: &str,
) -> Result<(), StoreError> {
    let (first, count) = table
        .get((exam, candidate, device))?
        .map_or((0, 0), |v| v.value());
    table.insert((exam, candidate, device), (first, count + 1))?;
    Ok(())
}

/// What the console shows of one candidate's devices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DeviceCounts {
    /// Devices (laptops' journals) the candidate saved from here that named themselves.
    pub devices: u64,
    /// Saves refused because the candidate continued on another device.
    pub continued_elsewhere: u64,
}

/// Per (exam, candidate), their devices and refusals. A store from before the table has none.
pub(crate) fn counts(
    read: &ReadTransaction,
) -> Result<BTreeMap<(String, String), DeviceCounts>, StoreError> {
    let mut out: BTreeMap<(String, String), DeviceCounts> = BTreeMap::new();
    let table = match read.open_table(DEVICES) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(out),
        Err(e) => return Err(e.into()),
    };
    for row in table.iter()? {
        let (key, value) = row?;
        let (exam, candidate, _) = key.value();
        let entry = out
            .entry((exam.to_owned(), candidate.to_owned()))
            .or_default();
        entry.devices += 1;
        entry.continued_elsewhere += value.value().1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use crate::{PutOutcome, open_for_test, put_for_test};

    fn put(candidate: &str, seq: u64, body: &str, device: Option<&str>) -> crate::PutRequest {
        let request = put_for_test(candidate, seq, body, false);
        match device {
            Some(d) => request.from_device(d),
            None => request,
        }
    }

    /// The rule of docs/integration.md, step by step: X saves, Y takes over at a later seq,
    /// X is refused from Y's first seq on (counted), an identical retry still answers 200, a
    /// save without the header is never refused, and the counts survive a reopening.
    #[tokio::test]
    async fn a_device_taken_over_from_is_refused_from_the_takeover_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_for_test(dir.path());
        let stored = |o: &PutOutcome| matches!(o, PutOutcome::Stored(_));
        for seq in 1..=3 {
            let o = store
                .put(put("c1", seq, &format!("x{seq}"), Some("X")))
                .await
                .unwrap();
            assert!(stored(&o), "{o:?}");
        }
        // Y starts after the highest seq it learned of.
        let o = store.put(put("c1", 5, "y5", Some("Y"))).await.unwrap();
        assert!(stored(&o), "{o:?}");
        // X's save 4 was made before the takeover: kept.
        let o = store.put(put("c1", 4, "x4", Some("X"))).await.unwrap();
        assert!(stored(&o), "{o:?}");
        // X at Y's first seq and past it: refused, whether or not the seq collides.
        for (seq, body) in [(5, "x5"), (6, "x6")] {
            assert_eq!(
                store.put(put("c1", seq, body, Some("X"))).await.unwrap(),
                PutOutcome::ContinuedElsewhere { took_over_at: 5 }
            );
        }
        // An identical retry of what X stored still answers with its receipt.
        assert!(matches!(
            store.put(put("c1", 3, "x3", Some("X"))).await.unwrap(),
            PutOutcome::Duplicate(_)
        ));
        // Y goes on; a save without the header is never refused by the rule.
        assert!(stored(
            &store.put(put("c1", 6, "y6", Some("Y"))).await.unwrap()
        ));
        assert!(stored(&store.put(put("c1", 7, "n7", None)).await.unwrap()));
        // Another candidate's devices are theirs alone.
        assert!(stored(
            &store.put(put("c2", 9, "z", Some("X"))).await.unwrap()
        ));

        let counts = store.device_counts().await.unwrap();
        let c1 = counts[&("e".to_owned(), "c1".to_owned())];
        assert_eq!((c1.devices, c1.continued_elsewhere), (2, 2));
        assert_eq!(store.status().await.unwrap().continued_elsewhere, 2);
        let integrity = store.verify().await.unwrap();
        assert!(integrity.is_whole(), "{:?}", integrity.problems);
        store.close().await;
        drop(store);
        let store = open_for_test(dir.path());
        assert_eq!(
            store.put(put("c1", 8, "x8", Some("X"))).await.unwrap(),
            PutOutcome::ContinuedElsewhere { took_over_at: 5 }
        );
        assert_eq!(store.status().await.unwrap().continued_elsewhere, 3);
    }

    /// Two devices in one group-commit batch see each other's rows.
    #[tokio::test]
    async fn one_batch_applies_the_rule_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_for_test(dir.path());
        store.put(put("c1", 1, "x1", Some("X"))).await.unwrap();
        let (y, x) = tokio::join!(
            store.put(put("c1", 2, "y2", Some("Y"))),
            store.put(put("c1", 3, "x3", Some("X")))
        );
        // Whichever the writer applied first, never both stored with X past Y's start.
        let (y, x) = (y.unwrap(), x.unwrap());
        assert!(matches!(y, PutOutcome::Stored(_)), "{y:?}");
        assert!(
            matches!(
                x,
                PutOutcome::ContinuedElsewhere { took_over_at: 2 } | PutOutcome::Stored(_)
            ),
            "{x:?}"
        );
        let refused = store.status().await.unwrap().continued_elsewhere;
        assert_eq!(
            refused,
            u64::from(matches!(x, PutOutcome::ContinuedElsewhere { .. }))
        );
    }
}
