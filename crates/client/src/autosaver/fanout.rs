//! Two boxes in one hall: while the cloud is gone, each save goes to two trusted boxes at
//! once, so that a box that dies takes no save with it.
//!
//! When the pins the client trusts (configured, and the cloud's relay list) name two boxes or
//! more, and neither the client's `hall_copies` option nor the relay list's says 1, the
//! autosaver keeps a second box beside the one it failed over to ([`Hall`]). A save is
//! written to both concurrently; it counts as held in the hall as soon as one box has
//! acknowledged it ([`Landed::Box`](super::Landed)), and it stays in the journal until the
//! cloud has it, as with one box. The second acknowledgement only changes what the candidate
//! is told ([`Saved::boxes`](super::Saved), [`Event::SecondCopy`](super::Event)). Both
//! receipts are kept in the journal and go to the cloud with the save.
//!
//! A box that fails is replaced: the second becomes the first, and the next trusted box that
//! answers becomes the second. A save acknowledged by one box only is written to another as
//! soon as one is reachable ([`Autosaver::keep_two`]), at the latest with the next save or
//! flush, so no save stays on a single box for longer than one autosave interval while a
//! second box exists.
//!
//! The boxes never talk to each other. Each PUT to a box carries `Hallrelay-Also-Held` with
//! the pin of the other box that holds the candidate's newest save, so that each box's
//! console can count the candidates it does not hold alone.
//!
//! The cost is hall bandwidth: every save crosses the hall network twice.

use std::time::Instant;

use bytes::Bytes;

use super::{Autosaver, Event, Put, Relay, SAVE_TIMEOUT};
use crate::connection::Reply;
use crate::journal::{Held, JournalError};
use hallrelay_protocol::receipt::Receipt;

/// Which box a connection reaches: its pin and appliance id, as its health answer names them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct BoxId {
    pub(super) pin: String,
    pub(super) appliance: String,
}

impl BoxId {
    /// Reads the box's health answer. Its pin must be one of `pins`: the caller then trusts
    /// that pin alone on this connection, so a box cannot pass for another trusted one.
    pub(super) fn of(reply: &Reply, pins: &[String]) -> Result<Self, String> {
        #[derive(serde::Deserialize)]
        struct Health {
            pin: String,
            appliance: String,
        }
        let health: Health = reply
            .json()
            .map_err(|e| format!("its health answer does not say which box it is ({e})"))?;
        if !pins.contains(&health.pin) {
            return Err(format!(
                "it says its pin is {}, which is not one of the exam's",
                health.pin
            ));
        }
        Ok(Self {
            pin: health.pin,
            appliance: health.appliance,
        })
    }

    /// Whether this box issued `receipt`.
    fn issued(&self, receipt: &Receipt) -> bool {
        match &receipt.pin {
            Some(pin) => *pin == self.pin,
            None => receipt.appliance == self.appliance,
        }
    }
}

/// The second box, and when one was last looked for.
#[derive(Default)]
pub(super) struct Hall {
    pub(super) second: Option<Relay>,
    last_search: Option<Instant>,
}

/// Which of the two boxes an answer came from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Which {
    First,
    Second,
}

impl Autosaver {
    /// How many boxes each save should go to: 2 when the trusted pins name two boxes or more
    /// and `hall_copies` (the client's option, else the relay list's, else 2) is not 1.
    pub(super) fn copies_wanted(&self) -> usize {
        let copies = self
            .options
            .hall_copies
            .or_else(|| self.learnt.as_ref().and_then(|l| l.hall_copies))
            .unwrap_or(2);
        if copies >= 2 && self.trusted_pins().len() >= 2 {
            2
        } else {
            1
        }
    }

    /// The receipts the journal holds for save `seq`.
    fn receipts_of(&self, seq: u64) -> Vec<Receipt> {
        self.journal
            .get(seq)
            .map(crate::journal::Entry::box_receipts)
            .unwrap_or_default()
    }

    /// How many boxes acknowledged save `seq` (one receipt per box).
    pub(super) fn boxes_holding(&self, seq: u64) -> usize {
        match self.journal.get(seq).map(|e| &e.held) {
            Some(Held::Box { receipts }) => receipts.len(),
            _ => 0,
        }
    }

    /// The pin to name in `Hallrelay-Also-Held` on a PUT to `to`: another box that holds the
    /// candidate's newest save held by any box.
    fn also_held_for(&self, to: &Relay) -> Option<String> {
        let newest = self
            .journal
            .entries()
            .filter(|e| matches!(e.held, Held::Box { .. }))
            .last()?;
        newest
            .box_receipts()
            .into_iter()
            .filter_map(|r| r.pin)
            .find(|pin| *pin != to.id.pin)
    }

    /// Sends save `seq` to each box in use that does not hold it yet, both at once. Returns
    /// false when sending more now is pointless (a box asked for time, or none is left).
    pub(super) async fn send_to_hall(
        &mut self,
        seq: u64,
        payload: Bytes,
        is_final: bool,
    ) -> Result<bool, JournalError> {
        let held = self.receipts_of(seq);
        let lacks = |r: &&Relay| !held.iter().any(|receipt| r.id.issued(receipt));
        let first = self.relay.as_ref().filter(lacks);
        let second = self.hall.second.as_ref().filter(lacks);
        let (a, b) = tokio::join!(
            self.send_to(first, seq, payload.clone(), is_final),
            self.send_to(second, seq, payload, is_final)
        );
        let mut go_on = true;
        // The second's answer first: when both failed, the first is not replaced by a box
        // that just failed too.
        for (which, answer) in [(Which::Second, b), (Which::First, a)] {
            let Some((name, answer)) = answer else {
                continue;
            };
            match answer {
                Put::Stored { receipt } => self.journal.mark_box(seq, &receipt)?,
                Put::Refused {
                    status,
                    reason,
                    code,
                } => {
                    let by = format!("the hall relay {name}");
                    self.refused(seq, &by, status, reason, code);
                }
                Put::Busy(why) => {
                    tracing::debug!(box_name = %name, %why, "the box asked for time");
                    go_on = false;
                }
                Put::Failed(error) => self.hall_box_failed(which, name, error),
            }
        }
        Ok(go_on && self.relay.is_some())
    }

    /// PUTs save `seq` to `relay`, if there is one; the box's name and the answer.
    async fn send_to(
        &self,
        relay: Option<&Relay>,
        seq: u64,
        payload: Bytes,
        is_final: bool,
    ) -> Option<(String, Put)> {
        let relay = relay?;
        let also = self.also_held_for(relay);
        let put = self
            .put_with(&relay.conn, seq, payload, is_final, &[], also.as_deref())
            .await;
        Some((relay.name.clone(), put))
    }

    /// A box in use stopped answering: the second replaces the first, and another trusted
    /// box is looked for with the next send.
    fn hall_box_failed(&mut self, which: Which, name: String, error: String) {
        self.emit(Event::BoxLost { name, error });
        match which {
            Which::Second => self.hall.second = None,
            Which::First => match self.hall.second.take() {
                Some(second) => {
                    self.emit(Event::FailedOver {
                        name: second.name.clone(),
                        url: second.url.clone(),
                    });
                    self.relay = Some(second);
                }
                None => {
                    self.relay = None;
                    self.last_search = None;
                }
            },
        }
    }

    /// In two-box mode, finds a second box if there is none, and sends it every save the
    /// journal holds that fewer than two boxes acknowledged (a save the dead box alone held
    /// goes to both boxes in use).
    pub(super) async fn keep_two(&mut self) -> Result<(), JournalError> {
        if self.relay.is_none() || self.copies_wanted() < 2 {
            return Ok(());
        }
        if self.hall.second.is_none() {
            self.find_second().await;
        }
        for seq in self.journal.not_in_cloud() {
            let held = self.receipts_of(seq);
            if held.len() >= 2 {
                continue;
            }
            let lacks = |r: &Relay| !held.iter().any(|receipt| r.id.issued(receipt));
            let wanted = self.relay.as_ref().is_some_and(lacks)
                || self.hall.second.as_ref().is_some_and(lacks);
            let Some(is_final) = self.is_final(seq).filter(|_| wanted) else {
                continue;
            };
            let before = held.len();
            let payload = Bytes::from(self.journal.payload(seq)?);
            let go_on = self.send_to_hall(seq, payload, is_final).await?;
            if before == 1 && self.boxes_holding(seq) >= 2 {
                let name = self
                    .hall
                    .second
                    .as_ref()
                    .or(self.relay.as_ref())
                    .map(|r| r.name.clone())
                    .unwrap_or_default();
                self.emit(Event::SecondCopy { seq, name });
            }
            if !go_on {
                break;
            }
        }
        Ok(())
    }

    /// Looks (at most every `probe_every`) for a trusted box other than the one in use, and
    /// makes it the second.
    async fn find_second(&mut self) {
        if self
            .hall
            .last_search
            .is_some_and(|at| at.elapsed() < self.options.probe_every)
        {
            return;
        }
        self.hall.last_search = Some(Instant::now());
        let Some((first_pin, first_url)) = self
            .relay
            .as_ref()
            .map(|r| (r.id.pin.clone(), r.url.clone()))
        else {
            return;
        };
        let pins = self.trusted_pins();
        // The browse is warm by now: what it has found is enough.
        let found = self.prospects(&pins, std::time::Duration::ZERO).await;
        for found in found {
            if found
                .pin_hint
                .as_ref()
                .is_some_and(|hint| !pins.contains(hint) || *hint == first_pin)
            {
                continue;
            }
            for url in found.urls {
                if url == first_url {
                    continue;
                }
                match self.try_box(&url, &pins).await {
                    Ok((conn, id)) if id.pin != first_pin => {
                        self.emit(Event::AlsoSaving {
                            name: found.name.clone(),
                            url: url.clone(),
                        });
                        let second = Relay {
                            name: found.name.clone(),
                            url,
                            conn: conn.with_timeout(SAVE_TIMEOUT),
                            id,
                        };
                        self.note_used(&second);
                        self.hall.second = Some(second);
                        return;
                    }
                    // Another address of the box in use.
                    Ok(_) => {}
                    Err(reason) => tracing::debug!(%url, %reason, "not a second box"),
                }
            }
        }
    }

    /// Back on the cloud: no box is in use.
    pub(super) fn leave_hall(&mut self) {
        self.hall = Hall::default();
    }
}
