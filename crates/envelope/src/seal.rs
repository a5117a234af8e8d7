//! Sealing a save into an envelope, and opening one with one recipient's key.
//!
//! A fresh 16-byte content key encrypts the payload once with AES-128-GCM; because it is used
//! for exactly one message, its nonce is the all-zero 12 bytes. The content key is then sealed
//! with HPKE (RFC 9180, base mode, single shot) to each recipient: the exam's key (the
//! platform) and, when the candidate has one, the restore key (the candidate's exam card).
//! Both AEADs authenticate the save's context (exam, candidate, seq, final), and the body's
//! also every header byte, so an envelope moved to another save, or a recipient added,
//! removed or changed, does not open.
//!
//! Sealing is randomised: a client seals a save once, when it journals it, and sends those
//! bytes everywhere (cloud, boxes, re-sends), or idempotency would turn re-sends into 409s.

use hpke::{Deserializable as _, OpModeR, OpModeS, Serializable as _};
use ring::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom as _, SystemRandom};

use crate::keys::{Kem, PrivateKey, PublicKey};
use hallrelay_protocol::envelope::{
    self, CONTENT_KEY_LEN, ENC_LEN, Envelope, EnvelopeError, HPKE_INFO, Recipient, Role,
    WRAPPED_KEY_LEN,
};

type Aead = hpke::aead::AesGcm128;
type Kdf = hpke::kdf::HkdfSha256;

/// The save an envelope belongs to: what its AEADs authenticate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Save<'a> {
    pub exam: &'a str,
    pub candidate: &'a str,
    pub seq: u64,
    pub is_final: bool,
}

impl Save<'_> {
    fn context(&self) -> Vec<u8> {
        envelope::context(self.exam, self.candidate, self.seq, self.is_final)
    }
}

/// The keys a client seals to.
#[derive(Clone, Debug)]
pub struct Sealer {
    exam: PublicKey,
    restore: Option<PublicKey>,
}

impl Sealer {
    /// Seals to the exam's key, and to the candidate's restore key if there is one.
    pub fn new(exam: PublicKey, restore: Option<PublicKey>) -> Self {
        Self { exam, restore }
    }

    /// Whether envelopes get a restore recipient (the candidate has a restore secret).
    pub fn seals_for_restore(&self) -> bool {
        self.restore.is_some()
    }

    /// The envelope of `payload` for `save`.
    pub fn seal(&self, save: &Save<'_>, payload: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        let mut content_key = [0u8; CONTENT_KEY_LEN];
        // The OS random source failing is not something a client can carry on from.
        rng.fill(&mut content_key)
            .expect("the operating system's random source failed");
        let context = save.context();
        let keys: Vec<(Role, &PublicKey)> = std::iter::once((Role::Exam, &self.exam))
            .chain(self.restore.iter().map(|k| (Role::Restore, k)))
            .collect();
        let preamble = envelope::preamble(keys.len());
        let recipients: Vec<Recipient> = keys
            .into_iter()
            .map(|(role, key)| {
                let key_id = key.key_id();
                let aad = envelope::recipient_aad(&preamble, role, &key_id, &context);
                // Sealing 16 bytes to a valid key with the OS random source cannot fail.
                let (enc, wrapped) = hpke::single_shot_seal::<Aead, Kdf, Kem>(
                    &OpModeS::Base,
                    &key.0,
                    HPKE_INFO,
                    &content_key,
                    &aad,
                )
                .expect("HPKE sealing a content key");
                let mut entry = Recipient {
                    role,
                    key_id,
                    enc: [0; ENC_LEN],
                    wrapped: [0; WRAPPED_KEY_LEN],
                };
                entry.enc.copy_from_slice(&enc.to_bytes());
                entry.wrapped.copy_from_slice(&wrapped);
                entry
            })
            .collect();
        let mut out = envelope::encode_header(&recipients);
        let header_len = out.len();
        let aad = envelope::body_aad(&out, &context);
        out.reserve(payload.len() + envelope::TAG_LEN);
        out.extend_from_slice(payload);
        let key = body_key(&content_key);
        // AES-GCM seals any length below 64 GiB.
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key([0; 12]),
                Aad::from(&aad),
                &mut out[header_len..],
            )
            .expect("AES-128-GCM sealing");
        out.extend_from_slice(tag.as_ref());
        out
    }
}

fn body_key(content_key: &[u8; CONTENT_KEY_LEN]) -> LessSafeKey {
    // A 16-byte key is always an AES-128 key.
    LessSafeKey::new(UnboundKey::new(&AES_128_GCM, content_key).expect("an AES-128 key"))
}

/// Why an envelope did not open.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpenError {
    #[error(transparent)]
    Format(#[from] EnvelopeError),
    #[error("the envelope is not sealed to this key (no {role:?} recipient with its key id)")]
    NotForThisKey { role: Role },
    #[error(
        "the envelope's content key does not open with this key for this save: it belongs to \
         another exam, candidate, seq or final flag, or its header was changed"
    )]
    Key,
    #[error("the envelope's body fails its check: its bytes were changed")]
    Body,
}

/// Opens `bytes` as the envelope of `save` with the private key of its `role` recipient.
pub fn open(
    bytes: &[u8],
    key: &PrivateKey,
    role: Role,
    save: &Save<'_>,
) -> Result<Vec<u8>, OpenError> {
    let envelope = Envelope::parse(bytes)?;
    let key_id = key.public().key_id();
    let recipient = envelope
        .recipients
        .iter()
        .find(|r| r.role == role && r.key_id == key_id)
        .ok_or(OpenError::NotForThisKey { role })?;
    let context = save.context();
    let aad = envelope::recipient_aad(envelope.header(), role, &key_id, &context);
    let enc =
        <Kem as hpke::Kem>::EncappedKey::from_bytes(&recipient.enc).map_err(|_| OpenError::Key)?;
    let content_key: [u8; CONTENT_KEY_LEN] = hpke::single_shot_open::<Aead, Kdf, Kem>(
        &OpModeR::Base,
        &key.0,
        &enc,
        HPKE_INFO,
        &recipient.wrapped,
        &aad,
    )
    .ok()
    .and_then(|k| k.try_into().ok())
    .ok_or(OpenError::Key)?;
    let aad = envelope::body_aad(envelope.header(), &context);
    let mut body = envelope.body().to_vec();
    let plain_len = body_key(&content_key)
        .open_in_place(
            Nonce::assume_unique_for_key([0; 12]),
            Aad::from(&aad),
            &mut body,
        )
        .map_err(|_| OpenError::Body)?
        .len();
    body.truncate(plain_len);
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;

    fn keys() -> (PrivateKey, PrivateKey) {
        (PrivateKey::derive(&[1; 32]), PrivateKey::derive(&[2; 32]))
    }

    const SAVE: Save<'static> = Save {
        exam: "math-2026",
        candidate: "c001",
        seq: 7,
        is_final: false,
    };

    #[test]
    fn both_recipients_open_what_was_sealed() {
        let (exam, restore) = keys();
        let sealer = Sealer::new(exam.public(), Some(restore.public()));
        let payload = b"photosynthesis turns light into sugar".repeat(100);
        let sealed = sealer.seal(&SAVE, &payload);
        assert_eq!(
            sealed.len(),
            payload.len() + hallrelay_protocol::envelope::OVERHEAD_TWO_RECIPIENTS
        );
        assert!(!sealed.windows(14).any(|w| w == b"photosynthesis"));
        assert_eq!(open(&sealed, &exam, Role::Exam, &SAVE), Ok(payload.clone()));
        assert_eq!(
            open(&sealed, &restore, Role::Restore, &SAVE),
            Ok(payload.clone())
        );
        // Randomised: the same save sealed twice differs (why clients seal once, at journaling).
        assert_ne!(sealer.seal(&SAVE, &payload), sealed);
    }

    #[test]
    fn a_flipped_byte_anywhere_is_detected() {
        let (exam, restore) = keys();
        let sealed = Sealer::new(exam.public(), Some(restore.public())).seal(&SAVE, b"answer 42");
        for at in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[at] ^= 0x01;
            for (key, role) in [(&exam, Role::Exam), (&restore, Role::Restore)] {
                assert!(
                    open(&bad, key, role, &SAVE).is_err(),
                    "byte {at} flipped opened for {role:?}"
                );
            }
        }
        let mut body = sealed.clone();
        let last = body.len() - 1;
        body[last] ^= 0x80;
        assert_eq!(open(&body, &exam, Role::Exam, &SAVE), Err(OpenError::Body));
    }

    #[test]
    fn another_save_s_context_does_not_open() {
        let (exam, restore) = keys();
        let sealed = Sealer::new(exam.public(), Some(restore.public())).seal(&SAVE, b"answer 42");
        let others = [
            Save {
                exam: "math-2027",
                ..SAVE
            },
            Save {
                candidate: "c002",
                ..SAVE
            },
            Save { seq: 8, ..SAVE },
            Save {
                is_final: true,
                ..SAVE
            },
        ];
        for other in others {
            assert_eq!(
                open(&sealed, &exam, Role::Exam, &other),
                Err(OpenError::Key),
                "{other:?}"
            );
            assert_eq!(
                open(&sealed, &restore, Role::Restore, &other),
                Err(OpenError::Key),
                "{other:?}"
            );
        }
    }

    #[test]
    fn the_wrong_key_or_role_does_not_open() {
        let (exam, restore) = keys();
        let stranger = PrivateKey::derive(&[3; 32]);
        let sealed = Sealer::new(exam.public(), Some(restore.public())).seal(&SAVE, b"answer 42");
        assert_eq!(
            open(&sealed, &stranger, Role::Exam, &SAVE),
            Err(OpenError::NotForThisKey { role: Role::Exam })
        );
        assert_eq!(
            open(&sealed, &exam, Role::Restore, &SAVE),
            Err(OpenError::NotForThisKey {
                role: Role::Restore
            })
        );
        let exam_only = Sealer::new(exam.public(), None).seal(&SAVE, b"answer 42");
        assert_eq!(
            open(&exam_only, &restore, Role::Restore, &SAVE),
            Err(OpenError::NotForThisKey {
                role: Role::Restore
            })
        );
        assert_eq!(
            open(b"answer 42", &exam, Role::Exam, &SAVE),
            Err(OpenError::Format(EnvelopeError::NotEncrypted))
        );
    }
}
