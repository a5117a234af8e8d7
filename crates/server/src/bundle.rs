//! The export bundle: everything a box stored, in one file that a USB stick carries to any
//! connected computer, checked offline and pushed to the cloud there (docs/bundle.md).
//!
//! A bundle is a sequence of frames. Each frame is one line of JSON (its `kind` and the
//! length `len` of what follows), then `len` raw bytes, then a newline: autosave frames (the
//! payload, with its name, blake3 and the box's signed receipt), then the offline-time
//! record (CSV, [`crate::report`]; bundles from before it have none), one manifest (every
//! entry's name, size, blake3 and receipt hash, and the record's blake3, as JSON), the box's
//! certificate (PEM), the box's signature over the manifest's exact bytes, and an end frame.
//! [`verify`] rejects any altered byte: a payload no longer matches its blake3, a header or
//! the record no longer matches the manifest, the manifest no longer matches its signature,
//! and the certificate is the one whose pin the manifest names.

use std::io::{self, BufRead, Read, Write};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use serde::{Deserialize, Serialize};

use hallrelay_protocol::ids::AutosaveName;
use hallrelay_protocol::receipt::Receipt;
use hallrelay_protocol::signing::VerifyingKey;

/// The first line of every bundle.
pub const MAGIC: &[u8] = b"hallrelay-bundle 1\n";
/// The manifest's `format`.
pub const FORMAT: &str = "hallrelay-bundle/1";
/// Header lines longer than this are refused before they are parsed.
const MAX_HEADER: usize = 64 * 1024;
/// Frames other than autosaves (manifest, certificate, signature) are at most this large.
const MAX_META: u64 = 256 * 1024 * 1024;

/// Why a bundle was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    #[error("reading the bundle: {0}")]
    Io(#[from] io::Error),
    #[error("not a hallrelay bundle (the first line is wrong)")]
    NotABundle,
    #[error("frame {frame}: {problem}")]
    Malformed { frame: u64, problem: String },
    #[error("{name}: the payload does not match its blake3 (altered)")]
    PayloadAltered { name: String },
    #[error("the manifest does not match the autosaves in the bundle: {0}")]
    ManifestMismatch(String),
    #[error("the box's signature over the manifest does not verify (altered)")]
    BadSignature,
    #[error("the certificate is unreadable or not the one the manifest names")]
    BadCertificate,
    #[error("{name}: the receipt does not verify against the box's certificate")]
    BadReceipt { name: String },
}

/// A frame's header line.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Header {
    Autosave {
        len: u64,
        exam: String,
        candidate: String,
        seq: u64,
        blake3: String,
        #[serde(rename = "final")]
        is_final: bool,
        receipt: Box<Receipt>,
    },
    /// The offline-time record, CSV.
    Record {
        len: u64,
    },
    Manifest {
        len: u64,
    },
    Certificate {
        len: u64,
    },
    Signature {
        len: u64,
    },
    End {
        len: u64,
    },
}

impl Header {
    fn len(&self) -> u64 {
        match self {
            Header::Autosave { len, .. }
            | Header::Record { len }
            | Header::Manifest { len }
            | Header::Certificate { len }
            | Header::Signature { len }
            | Header::End { len } => *len,
        }
    }
}

/// One autosave as the manifest lists it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ManifestEntry {
    pub exam: String,
    pub candidate: String,
    pub seq: u64,
    pub size: u64,
    pub blake3: String,
    #[serde(rename = "final")]
    pub is_final: bool,
    /// blake3 of the receipt's signing input ([`Receipt::hash`]).
    pub receipt_hash: String,
}

impl ManifestEntry {
    pub fn of(receipt: &Receipt) -> Self {
        Self {
            exam: receipt.exam.clone(),
            candidate: receipt.candidate.clone(),
            seq: receipt.seq,
            size: receipt.size,
            blake3: receipt.blake3.clone(),
            is_final: receipt.is_final,
            receipt_hash: receipt.hash(),
        }
    }
}

/// What the box signs: the whole list, in bundle order.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub appliance: String,
    pub name: String,
    /// The pin of the certificate in the bundle.
    pub pin: String,
    /// blake3 of the certificate (DER): the signature covers the whole certificate, not only
    /// its key.
    pub certificate_blake3: String,
    pub exported_at: String,
    pub count: u64,
    pub bytes: u64,
    pub entries: Vec<ManifestEntry>,
    /// blake3 of the offline-time record's frame body; absent in bundles made before the
    /// record existed (which carry none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_blake3: Option<String>,
}

/// A certificate in the one PEM form bundles use (64-column base64, `\n` line ends), so that
/// [`verify`] can insist on exactly these bytes: PEM readers skip white space, and a changed
/// byte that a reader would skip must still be refused.
pub fn certificate_pem(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// Writes one frame.
pub fn write_frame(out: &mut impl Write, header: &Header, body: &[u8]) -> io::Result<()> {
    debug_assert_eq!(header.len(), body.len() as u64);
    serde_json::to_writer(&mut *out, header)?;
    out.write_all(b"\n")?;
    out.write_all(body)?;
    out.write_all(b"\n")
}

/// The autosave frame of a stored autosave.
pub fn autosave_frame(out: &mut impl Write, receipt: &Receipt, payload: &[u8]) -> io::Result<()> {
    let header = Header::Autosave {
        len: payload.len() as u64,
        exam: receipt.exam.clone(),
        candidate: receipt.candidate.clone(),
        seq: receipt.seq,
        blake3: receipt.blake3.clone(),
        is_final: receipt.is_final,
        receipt: Box::new(receipt.clone()),
    };
    write_frame(out, &header, payload)
}

/// The bundle's tail: the offline-time record (CSV; the manifest names its blake3),
/// manifest, certificate (PEM), signature, end.
pub fn tail_frames(
    out: &mut impl Write,
    record: &[u8],
    manifest: &[u8],
    certificate_pem: &[u8],
    signature: &[u8],
) -> io::Result<()> {
    let len = |b: &[u8]| b.len() as u64;
    write_frame(out, &Header::Record { len: len(record) }, record)?;
    write_frame(out, &Header::Manifest { len: len(manifest) }, manifest)?;
    write_frame(
        out,
        &Header::Certificate {
            len: len(certificate_pem),
        },
        certificate_pem,
    )?;
    let signature = STANDARD.encode(signature);
    write_frame(
        out,
        &Header::Signature {
            len: len(signature.as_bytes()),
        },
        signature.as_bytes(),
    )?;
    write_frame(out, &Header::End { len: 0 }, b"")
}

/// Reads frames one at a time.
pub struct Reader<R> {
    input: R,
    frame: u64,
}

impl<R: BufRead> Reader<R> {
    /// Checks the first line.
    pub fn new(mut input: R) -> Result<Self, BundleError> {
        let mut magic = vec![0u8; MAGIC.len()];
        input
            .read_exact(&mut magic)
            .map_err(|_| BundleError::NotABundle)?;
        if magic != MAGIC {
            return Err(BundleError::NotABundle);
        }
        Ok(Self { input, frame: 0 })
    }

    fn malformed(&self, problem: impl Into<String>) -> BundleError {
        BundleError::Malformed {
            frame: self.frame,
            problem: problem.into(),
        }
    }

    /// The next frame's header and body; `None` after the end frame (and nothing after it).
    pub fn next_frame(&mut self) -> Result<Option<(Header, Vec<u8>)>, BundleError> {
        self.frame += 1;
        let mut line = Vec::new();
        (&mut self.input)
            .take(MAX_HEADER as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if line.last() != Some(&b'\n') {
            return Err(self.malformed("the header line is cut off or too long"));
        }
        line.pop();
        let header: Header = serde_json::from_slice(&line)
            .map_err(|e| self.malformed(format!("bad header: {e}")))?;
        let len = header.len();
        if !matches!(header, Header::Autosave { .. }) && len > MAX_META {
            return Err(self.malformed("frame too large"));
        }
        let mut body = Vec::with_capacity(usize::try_from(len.min(1 << 24)).unwrap_or(0));
        (&mut self.input).take(len).read_to_end(&mut body)?;
        let mut newline = [0u8; 1];
        if body.len() as u64 != len
            || self.input.read_exact(&mut newline).is_err()
            || newline != *b"\n"
        {
            return Err(self.malformed("the frame is cut off"));
        }
        if let Header::End { .. } = header {
            let mut rest = [0u8; 1];
            if self.input.read(&mut rest)? != 0 {
                return Err(self.malformed("bytes after the end frame"));
            }
            return Ok(None);
        }
        Ok(Some((header, body)))
    }
}

/// One autosave of a verified bundle, as `import` sends it.
#[derive(Clone, Debug)]
pub struct Autosave {
    pub name: AutosaveName,
    pub is_final: bool,
    pub receipt: Receipt,
    pub payload: Vec<u8>,
}

/// What a verified bundle holds.
#[derive(Clone, Debug)]
pub struct Summary {
    pub manifest: Manifest,
    pub pin: String,
    /// The offline-time record (CSV), checked against the manifest; `None` in a bundle made
    /// before the record existed.
    pub record: Option<Vec<u8>>,
}

/// Reads a whole bundle, checks every byte of it, and calls `each` with every autosave in
/// order (only once its payload and receipt are checked; the manifest and signature are
/// checked at the end, so act on the autosaves only after this returns `Ok`).
pub fn verify(
    input: impl BufRead,
    mut each: impl FnMut(&Autosave),
) -> Result<Summary, BundleError> {
    let mut reader = Reader::new(input)?;
    let mut entries = Vec::new();
    let mut receipts = Vec::new();
    let (mut manifest, mut certificate, mut signature) = (None, None, None);
    let mut record = None;
    while let Some((header, body)) = reader.next_frame()? {
        match header {
            Header::Autosave {
                exam,
                candidate,
                seq,
                blake3,
                is_final,
                receipt,
                ..
            } => {
                if manifest.is_some() {
                    return Err(reader.malformed("an autosave after the manifest"));
                }
                let name = AutosaveName {
                    exam,
                    candidate,
                    seq,
                };
                let (autosave, entry) = check_autosave(name, &blake3, is_final, *receipt, body)?;
                each(&autosave);
                receipts.push((autosave.name.to_string(), autosave.receipt));
                entries.push(entry);
            }
            Header::Record { .. } if record.is_none() && manifest.is_none() => {
                record = Some(body);
            }
            Header::Manifest { .. } if manifest.is_none() => manifest = Some(body),
            Header::Certificate { .. } if certificate.is_none() => certificate = Some(body),
            Header::Signature { .. } if signature.is_none() => signature = Some(body),
            _ => return Err(reader.malformed("an unexpected or repeated frame")),
        }
    }
    let (Some(manifest_bytes), Some(pem), Some(signature)) = (manifest, certificate, signature)
    else {
        return Err(reader.malformed("the manifest, certificate or signature is missing"));
    };
    let (certificate, key) = read_certificate(&pem)?;
    let (manifest, pin) = read_manifest(&manifest_bytes, &signature, &certificate, &key)?;
    if manifest.entries != entries
        || manifest.count != entries.len() as u64
        || manifest.bytes != entries.iter().map(|e| e.size).sum::<u64>()
    {
        return Err(BundleError::ManifestMismatch(
            "entries, count or bytes differ".into(),
        ));
    }
    let record_blake3 = record
        .as_deref()
        .map(|r| blake3::hash(r).to_hex().to_string());
    if manifest.record_blake3 != record_blake3 {
        return Err(BundleError::ManifestMismatch(
            "the offline-time record differs from the one the manifest names".into(),
        ));
    }
    for (name, receipt) in &receipts {
        receipt
            .verify(&key)
            .map_err(|_| BundleError::BadReceipt { name: name.clone() })?;
    }
    Ok(Summary {
        manifest,
        pin,
        record,
    })
}

/// Checks an autosave frame on its own: its payload matches its blake3, and its header says
/// what its receipt says. Returns the autosave and its manifest entry.
fn check_autosave(
    name: AutosaveName,
    blake3: &str,
    is_final: bool,
    receipt: Receipt,
    payload: Vec<u8>,
) -> Result<(Autosave, ManifestEntry), BundleError> {
    if blake3::hash(&payload).to_hex().as_str() != blake3 {
        return Err(BundleError::PayloadAltered {
            name: name.to_string(),
        });
    }
    let entry = ManifestEntry::of(&receipt);
    let header_says = (
        &name.exam,
        &name.candidate,
        name.seq,
        payload.len() as u64,
        blake3,
        is_final,
    );
    let receipt_says = (
        &entry.exam,
        &entry.candidate,
        entry.seq,
        entry.size,
        entry.blake3.as_str(),
        entry.is_final,
    );
    if header_says != receipt_says {
        return Err(BundleError::ManifestMismatch(format!(
            "{name}: the header and its receipt disagree"
        )));
    }
    let autosave = Autosave {
        name,
        is_final,
        receipt,
        payload,
    };
    Ok((autosave, entry))
}

/// The box's certificate from its frame, which must be exactly the PEM the box writes, and
/// the key it holds.
fn read_certificate(pem: &[u8]) -> Result<(CertificateDer<'static>, VerifyingKey), BundleError> {
    let certificate =
        CertificateDer::from_pem_slice(pem).map_err(|_| BundleError::BadCertificate)?;
    if certificate_pem(certificate.as_ref()).as_bytes() != pem {
        return Err(BundleError::BadCertificate);
    }
    let key =
        VerifyingKey::from_certificate(&certificate).map_err(|_| BundleError::BadCertificate)?;
    Ok((certificate, key))
}

/// The manifest, once the box's signature over its exact bytes verifies and it names this
/// certificate (by pin and blake3) and this format. Returns it with the certificate's pin.
fn read_manifest(
    bytes: &[u8],
    signature: &[u8],
    certificate: &CertificateDer<'_>,
    key: &VerifyingKey,
) -> Result<(Manifest, String), BundleError> {
    let signature = STANDARD
        .decode(signature)
        .map_err(|_| BundleError::BadSignature)?;
    if !key.verifies(bytes, &signature) {
        return Err(BundleError::BadSignature);
    }
    let manifest: Manifest = serde_json::from_slice(bytes)
        .map_err(|e| BundleError::ManifestMismatch(format!("unreadable manifest: {e}")))?;
    let pin = hallrelay_protocol::pin::pin_of_certificate(certificate)
        .map_err(|_| BundleError::BadCertificate)?;
    if manifest.pin != pin
        || manifest.format != FORMAT
        || manifest.certificate_blake3 != blake3::hash(certificate.as_ref()).to_hex().as_str()
    {
        return Err(BundleError::BadCertificate);
    }
    Ok((manifest, pin))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    /// A bundle of no autosaves, signed by a fresh identity, with the offline-time record
    /// `record` (`None`: a bundle as builds before the record wrote them) and the manifest
    /// naming `names` as the record's blake3.
    fn bundle(record: Option<&[u8]>, names: Option<String>) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let identity = Identity::load_or_create(dir.path(), &[], &[]).unwrap();
        let manifest = Manifest {
            format: FORMAT.into(),
            appliance: "app1".into(),
            name: "hall-b".into(),
            pin: identity.pin().to_owned(),
            certificate_blake3: blake3::hash(identity.certificate().as_ref())
                .to_hex()
                .to_string(),
            exported_at: "2026-12-05T10:00:00.000Z".into(),
            count: 0,
            bytes: 0,
            entries: Vec::new(),
            record_blake3: names,
        };
        let manifest = serde_json::to_vec(&manifest).unwrap();
        let signature = identity.sign(&manifest);
        let pem = certificate_pem(identity.certificate());
        let mut out = MAGIC.to_vec();
        match record {
            Some(record) => {
                tail_frames(&mut out, record, &manifest, pem.as_bytes(), &signature).unwrap()
            }
            None => {
                let len = |b: &[u8]| b.len() as u64;
                write_frame(
                    &mut out,
                    &Header::Manifest {
                        len: len(&manifest),
                    },
                    &manifest,
                )
                .unwrap();
                write_frame(
                    &mut out,
                    &Header::Certificate {
                        len: len(pem.as_bytes()),
                    },
                    pem.as_bytes(),
                )
                .unwrap();
                let signature = STANDARD.encode(signature);
                write_frame(
                    &mut out,
                    &Header::Signature {
                        len: len(signature.as_bytes()),
                    },
                    signature.as_bytes(),
                )
                .unwrap();
                write_frame(&mut out, &Header::End { len: 0 }, b"").unwrap();
            }
        }
        out
    }

    fn check(bytes: Vec<u8>) -> Result<Summary, BundleError> {
        verify(io::Cursor::new(bytes), |_| {})
    }

    #[test]
    fn the_record_is_carried_signed_and_old_bundles_without_it_still_verify() {
        let record = b"exam,candidate\r\nmath,c1\r\n";
        let hash = blake3::hash(record).to_hex().to_string();
        let summary = check(bundle(Some(record), Some(hash.clone()))).unwrap();
        assert_eq!(summary.record.as_deref(), Some(&record[..]));

        // A bundle made before the record: no frame, no blake3 in the manifest.
        let old = bundle(None, None);
        assert!(!String::from_utf8_lossy(&old).contains("record"));
        assert_eq!(check(old).unwrap().record, None);

        // A record the manifest does not name, or another one than it names, or none where
        // it names one, is refused.
        let refused = |bytes| matches!(check(bytes), Err(BundleError::ManifestMismatch(_)));
        assert!(refused(bundle(Some(record), None)));
        assert!(refused(bundle(
            Some(b"exam,candidate\r\nmath,c2\r\n"),
            Some(hash.clone())
        )));
        assert!(refused(bundle(None, Some(hash))));
    }
}
