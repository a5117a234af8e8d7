//! The answer envelope's format: what an encrypted autosave looks like on the wire, read
//! without any key.
//!
//! A client encrypts each save before it leaves the laptop (the `hallrelay-envelope` crate
//! seals and opens). A box never decrypts, but it must be able to tell an envelope from
//! plaintext or garbage (`require_encrypted`, the console's "encrypted" column), and every
//! party must agree on the bytes the AEADs authenticate. Both live here, with no cryptography,
//! so that the box links no code that could open an answer. docs/envelope.md is the
//! specification a platform implements from.
//!
//! ```text
//! preamble   "HRAE" | version 1 | kem 0x0020 | kdf 0x0001 | aead 0x0001 | n (1..=4)   12 bytes
//! recipient  role | key id (8) | enc (32) | wrapped content key (16 + 16 tag)        73 bytes, n times
//! body       AES-128-GCM(content key, nonce 0, payload, aad = preamble‖recipients‖context)
//! ```
//!
//! The context ([`context`]) names exam, candidate, seq and the final flag: an envelope moved
//! to another save does not open.

/// The first four bytes of every envelope.
pub const MAGIC: [u8; 4] = *b"HRAE";
/// The envelope version this module reads and writes.
pub const VERSION: u8 = 1;
/// RFC 9180 ids of the one suite version 1 uses: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
/// AES-128-GCM (a suite browsers' WebCrypto can also do).
pub const KEM_X25519_HKDF_SHA256: u16 = 0x0020;
pub const KDF_HKDF_SHA256: u16 = 0x0001;
pub const AEAD_AES_128_GCM: u16 = 0x0001;
/// The HPKE `info` of every recipient's key encapsulation.
pub const HPKE_INFO: &[u8] = b"hallrelay-envelope-v1";

/// Magic, version, three suite ids, recipient count.
pub const PREAMBLE_LEN: usize = 12;
/// A recipient's key id: the first 8 bytes of SHA-256 of its raw X25519 public key.
pub const KEY_ID_LEN: usize = 8;
/// An X25519 encapsulated key.
pub const ENC_LEN: usize = 32;
/// The random content key.
pub const CONTENT_KEY_LEN: usize = 16;
/// An AES-128-GCM tag.
pub const TAG_LEN: usize = 16;
/// The content key sealed to one recipient.
pub const WRAPPED_KEY_LEN: usize = CONTENT_KEY_LEN + TAG_LEN;
/// One recipient entry.
pub const RECIPIENT_LEN: usize = 1 + KEY_ID_LEN + ENC_LEN + WRAPPED_KEY_LEN;
/// More recipients than this is a malformed envelope.
pub const MAX_RECIPIENTS: usize = 4;
/// The bytes an envelope adds to its payload: preamble, two recipients, the body's tag.
pub const OVERHEAD_TWO_RECIPIENTS: usize = PREAMBLE_LEN + 2 * RECIPIENT_LEN + TAG_LEN;

/// Who a recipient entry is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The platform, through the exam's public key.
    Exam,
    /// The candidate, through the key derived from the restore secret on their exam card.
    Restore,
    /// A role a later version defines: kept, and skipped by readers of this one.
    Other(u8),
}

impl Role {
    pub fn byte(self) -> u8 {
        match self {
            Role::Exam => 1,
            Role::Restore => 2,
            Role::Other(b) => b,
        }
    }

    pub fn of(byte: u8) -> Self {
        match byte {
            1 => Role::Exam,
            2 => Role::Restore,
            b => Role::Other(b),
        }
    }
}

/// One recipient: the content key, sealed with HPKE to one public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recipient {
    pub role: Role,
    pub key_id: [u8; KEY_ID_LEN],
    pub enc: [u8; ENC_LEN],
    pub wrapped: [u8; WRAPPED_KEY_LEN],
}

/// An envelope, read: its recipients and where its parts are.
#[derive(Clone, Debug)]
pub struct Envelope<'a> {
    bytes: &'a [u8],
    pub recipients: Vec<Recipient>,
}

/// Why bytes are not a usable envelope. [`code`](Self::code) is the API's error code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    #[error("the payload is not an encrypted answer envelope (it does not start with \"HRAE\")")]
    NotEncrypted,
    #[error("the envelope is version {0}; this box reads version 1")]
    Version(u8),
    #[error(
        "the envelope's suite is kem {kem:#06x}, kdf {kdf:#06x}, aead {aead:#06x}; version 1 \
         uses X25519 (0x0020), HKDF-SHA256 (0x0001) and AES-128-GCM (0x0001)"
    )]
    Suite { kem: u16, kdf: u16, aead: u16 },
    #[error("the envelope is malformed: {0}")]
    Malformed(&'static str),
}

impl EnvelopeError {
    /// The `error` code a box answers with (400).
    pub fn code(&self) -> &'static str {
        match self {
            EnvelopeError::NotEncrypted => "not_encrypted",
            EnvelopeError::Version(_) => "envelope_version",
            EnvelopeError::Suite { .. } => "envelope_suite",
            EnvelopeError::Malformed(_) => "envelope_malformed",
        }
    }
}

/// Whether `bytes` claim to be an envelope (the magic), before any other check.
pub fn looks_like(bytes: &[u8]) -> bool {
    bytes.starts_with(&MAGIC)
}

impl<'a> Envelope<'a> {
    /// Reads an envelope's structure: magic, version, suite, recipients (1 to 4, at least one
    /// for the exam) and a body of at least one byte plus its tag. Checks nothing a key would
    /// be needed for.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, EnvelopeError> {
        if !looks_like(bytes) {
            return Err(EnvelopeError::NotEncrypted);
        }
        if bytes.len() < PREAMBLE_LEN {
            return Err(EnvelopeError::Malformed("it ends inside its preamble"));
        }
        if bytes[4] != VERSION {
            return Err(EnvelopeError::Version(bytes[4]));
        }
        let id = |at: usize| u16::from_be_bytes([bytes[at], bytes[at + 1]]);
        let (kem, kdf, aead) = (id(5), id(7), id(9));
        if (kem, kdf, aead) != (KEM_X25519_HKDF_SHA256, KDF_HKDF_SHA256, AEAD_AES_128_GCM) {
            return Err(EnvelopeError::Suite { kem, kdf, aead });
        }
        let count = usize::from(bytes[11]);
        if count == 0 || count > MAX_RECIPIENTS {
            return Err(EnvelopeError::Malformed("it must have 1 to 4 recipients"));
        }
        let header_len = PREAMBLE_LEN + count * RECIPIENT_LEN;
        if bytes.len() < header_len + 1 + TAG_LEN {
            return Err(EnvelopeError::Malformed(
                "it ends before its body (or its body is shorter than a tag and one byte)",
            ));
        }
        let recipients: Vec<Recipient> = bytes[PREAMBLE_LEN..header_len]
            .chunks_exact(RECIPIENT_LEN)
            .map(|entry| {
                let (role, rest) = entry.split_at(1);
                let (key_id, rest) = rest.split_at(KEY_ID_LEN);
                let (enc, wrapped) = rest.split_at(ENC_LEN);
                Recipient {
                    role: Role::of(role[0]),
                    key_id: key_id.try_into().unwrap_or_default(),
                    enc: enc.try_into().unwrap_or([0; ENC_LEN]),
                    wrapped: wrapped.try_into().unwrap_or([0; WRAPPED_KEY_LEN]),
                }
            })
            .collect();
        if !recipients.iter().any(|r| r.role == Role::Exam) {
            return Err(EnvelopeError::Malformed(
                "it has no recipient for the exam's key (role 1)",
            ));
        }
        Ok(Self { bytes, recipients })
    }

    /// Preamble and recipients: the bytes the body's AEAD authenticates before the context.
    pub fn header(&self) -> &'a [u8] {
        &self.bytes[..PREAMBLE_LEN + self.recipients.len() * RECIPIENT_LEN]
    }

    /// The body: the payload's ciphertext and its tag.
    pub fn body(&self) -> &'a [u8] {
        &self.bytes[self.header().len()..]
    }

    /// The first recipient with `role`.
    pub fn recipient(&self, role: Role) -> Option<&Recipient> {
        self.recipients.iter().find(|r| r.role == role)
    }
}

/// The preamble of an envelope with `count` recipients (1 to 4).
pub fn preamble(count: usize) -> [u8; PREAMBLE_LEN] {
    let mut out = [0; PREAMBLE_LEN];
    out[..4].copy_from_slice(&MAGIC);
    out[4] = VERSION;
    out[5..7].copy_from_slice(&KEM_X25519_HKDF_SHA256.to_be_bytes());
    out[7..9].copy_from_slice(&KDF_HKDF_SHA256.to_be_bytes());
    out[9..11].copy_from_slice(&AEAD_AES_128_GCM.to_be_bytes());
    // The sealer passes 1 to 4; `parse` refuses anything else.
    out[11] = u8::try_from(count).unwrap_or(u8::MAX);
    out
}

/// The preamble and recipients of a new envelope, to which the sealer appends the body.
pub fn encode_header(recipients: &[Recipient]) -> Vec<u8> {
    let mut out = Vec::with_capacity(PREAMBLE_LEN + recipients.len() * RECIPIENT_LEN);
    out.extend_from_slice(&preamble(recipients.len()));
    for r in recipients {
        out.push(r.role.byte());
        out.extend_from_slice(&r.key_id);
        out.extend_from_slice(&r.enc);
        out.extend_from_slice(&r.wrapped);
    }
    out
}

/// The save an envelope belongs to, as both AEADs authenticate it:
/// `hallrelay-envelope-v1\nexam=E\ncandidate=C\nseq=S\nfinal=0|1\n` (ids are
/// `[A-Za-z0-9._-]`, seq a canonical decimal, so the text is unambiguous).
pub fn context(exam: &str, candidate: &str, seq: u64, is_final: bool) -> Vec<u8> {
    format!(
        "hallrelay-envelope-v1\nexam={exam}\ncandidate={candidate}\nseq={seq}\nfinal={}\n",
        u8::from(is_final)
    )
    .into_bytes()
}

/// The additional data of the HPKE encapsulation to one recipient: the preamble (which fixes
/// version, suite and recipient count), the recipient's role and key id, and the context.
pub fn recipient_aad(
    preamble: &[u8],
    role: Role,
    key_id: &[u8; KEY_ID_LEN],
    context: &[u8],
) -> Vec<u8> {
    let mut aad = Vec::with_capacity(PREAMBLE_LEN + 1 + KEY_ID_LEN + context.len());
    aad.extend_from_slice(&preamble[..PREAMBLE_LEN.min(preamble.len())]);
    aad.push(role.byte());
    aad.extend_from_slice(key_id);
    aad.extend_from_slice(context);
    aad
}

/// The additional data of the body: every header byte, then the context. Adding, removing or
/// changing a recipient breaks the body.
pub fn body_aad(header: &[u8], context: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + context.len());
    aad.extend_from_slice(header);
    aad.extend_from_slice(context);
    aad
}

/// A recipient's key id: the first 8 bytes of SHA-256 of its raw 32-byte public key.
pub fn key_id(public: &[u8; 32]) -> [u8; KEY_ID_LEN] {
    let digest = ring::digest::digest(&ring::digest::SHA256, public);
    let mut id = [0; KEY_ID_LEN];
    id.copy_from_slice(&digest.as_ref()[..KEY_ID_LEN]);
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(recipients: usize, body: usize) -> Vec<u8> {
        let entries: Vec<Recipient> = (0..recipients)
            .map(|i| Recipient {
                role: if i == 0 { Role::Exam } else { Role::Restore },
                key_id: [i as u8; KEY_ID_LEN],
                enc: [7; ENC_LEN],
                wrapped: [9; WRAPPED_KEY_LEN],
            })
            .collect();
        let mut bytes = encode_header(&entries);
        bytes.extend(std::iter::repeat_n(0xAB, body));
        bytes
    }

    #[test]
    fn a_written_header_reads_back() {
        let bytes = sample(2, 40);
        let envelope = Envelope::parse(&bytes).expect("parses");
        assert_eq!(envelope.recipients.len(), 2);
        assert_eq!(envelope.header().len(), PREAMBLE_LEN + 2 * RECIPIENT_LEN);
        assert_eq!(envelope.body().len(), 40);
        assert_eq!(
            envelope.recipient(Role::Restore).map(|r| r.key_id),
            Some([1; 8])
        );
        assert_eq!(bytes.len() - 40 + TAG_LEN, OVERHEAD_TWO_RECIPIENTS);
    }

    #[test]
    fn every_defect_has_its_own_code() {
        let good = sample(1, 17);
        assert!(Envelope::parse(&good).is_ok());
        let code = |bytes: &[u8]| Envelope::parse(bytes).err().map(|e| e.code());
        assert_eq!(code(b"photosynthesis is"), Some("not_encrypted"));
        assert_eq!(code(b""), Some("not_encrypted"));
        assert_eq!(code(b"HRAE"), Some("envelope_malformed"));
        let mut v2 = good.clone();
        v2[4] = 2;
        assert_eq!(code(&v2), Some("envelope_version"));
        let mut chacha = good.clone();
        chacha[10] = 3;
        assert_eq!(code(&chacha), Some("envelope_suite"));
        for count in [0, 5, 255] {
            let mut bad = good.clone();
            bad[11] = count;
            assert_eq!(code(&bad), Some("envelope_malformed"), "{count} recipients");
        }
        assert_eq!(code(&good[..good.len() - 1]), Some("envelope_malformed"));
        let mut restore_only = good.clone();
        restore_only[PREAMBLE_LEN] = Role::Restore.byte();
        assert_eq!(code(&restore_only), Some("envelope_malformed"));
    }

    #[test]
    fn the_context_names_the_save() {
        assert_eq!(
            context("math-2026", "c001", 7, true),
            b"hallrelay-envelope-v1\nexam=math-2026\ncandidate=c001\nseq=7\nfinal=1\n"
        );
        assert_ne!(context("e", "c", 1, false), context("e", "c", 1, true));
    }
}
