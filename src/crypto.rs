//! Encrypted repositories: the master key, what is derived from it, key files, and sealing.
//!
//! A repository created with `init --encrypt` has a random 32-byte master key. Each passphrase
//! wraps it in a key file (`keys/<id>.key`): argon2id turns the passphrase into a key-encryption
//! key, which seals the master key with XChaCha20-Poly1305. From the master key, BLAKE3's key
//! derivation gives independent keys for:
//! - blob and snapshot ids (keyed BLAKE3), so an id does not confirm known content;
//! - the FastCDC gear table, so chunk boundaries (and so sizes) do not fingerprint content;
//! - sealing (XChaCha20-Poly1305 with a random 192-bit nonce per object, and associated data
//!   naming the object's type) of frames, manifests and the retention settings;
//! - a MAC (keyed BLAKE3) over pack trailers, which stay readable so the index can be rebuilt
//!   from them, and over file-cache paths in the index.

use crate::codec::frame;
use crate::error::{Error, Result};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};

/// The `key_scheme` of an encrypted repository's config.
pub const SCHEME: &str = "xchacha20poly1305-argon2id";
/// The `id_hash` of an encrypted repository's config.
pub const ID_HASH: &str = "blake3-keyed";

const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Bytes a sealed object has beyond its plaintext: nonce and tag.
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// What a sealed object is; part of its associated data, so one kind of object cannot be passed
/// off as another.
#[derive(Clone, Copy, Debug)]
pub enum Object {
    Frame,
    Manifest,
    Retention,
    PageSums,
    /// A WAL file in the archive's spool (see `pg::spool`).
    Spool,
}

impl Object {
    fn associated_data(self) -> &'static [u8] {
        match self {
            Object::Frame => b"strata frame v1",
            Object::Manifest => b"strata manifest v1",
            Object::Retention => b"strata retention v1",
            Object::PageSums => b"strata page sums v1",
            Object::Spool => b"strata spool v1",
        }
    }
}

/// The keys of an unlocked repository.
pub struct Keys {
    master: [u8; 32],
    id: [u8; 32],
    mac: [u8; 32],
    gear: [u8; 32],
    cipher: XChaCha20Poly1305,
}

impl Keys {
    pub fn from_master(master: &[u8; 32]) -> Keys {
        let sub = |context: &str| blake3::derive_key(context, master);
        let seal = sub("strata 2026-11 seal key");
        Keys {
            master: *master,
            id: sub("strata 2026-11 blob id key"),
            mac: sub("strata 2026-11 mac key"),
            gear: sub("strata 2026-11 chunker gear key"),
            cipher: XChaCha20Poly1305::new((&seal).into()),
        }
    }

    /// The master key, to wrap it for another passphrase.
    pub fn master(&self) -> &[u8; 32] {
        &self.master
    }

    /// The key of keyed-BLAKE3 blob and snapshot ids.
    pub fn id_key(&self) -> &[u8; 32] {
        &self.id
    }

    /// The key of MACs (pack trailers).
    pub fn mac_key(&self) -> &[u8; 32] {
        &self.mac
    }

    /// A MAC of `data` (keyed BLAKE3).
    pub fn mac(&self, data: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&self.mac, data).as_bytes()
    }

    /// The secret FastCDC gear table: 256 words from a keyed BLAKE3 output stream.
    pub fn gear(&self) -> Box<[u64; 256]> {
        let mut bytes = [0u8; 256 * 8];
        blake3::Hasher::new_keyed(&self.gear)
            .finalize_xof()
            .fill(&mut bytes);
        let mut gear = Box::new([0u64; 256]);
        for (g, b) in gear.iter_mut().zip(bytes.chunks_exact(8)) {
            *g = u64::from_le_bytes(b.try_into().expect("8 bytes"));
        }
        gear
    }

    /// `nonce || ciphertext || tag`.
    pub fn seal(&self, object: Object, plain: &[u8]) -> Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        crate::sys::secure_random(&mut nonce)?;
        seal_with(&self.cipher, &nonce, object.associated_data(), plain)
    }

    /// Opens what [`Keys::seal`] made; any change to it is an error naming `what`.
    pub fn open(&self, object: Object, sealed: &[u8], what: &str) -> Result<Vec<u8>> {
        open_with(&self.cipher, object.associated_data(), sealed, what)
    }
}

fn seal_with(
    cipher: &XChaCha20Poly1305,
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    plain: &[u8],
) -> Result<Vec<u8>> {
    let body = cipher
        .encrypt(XNonce::from_slice(nonce), Payload { msg: plain, aad })
        .map_err(|_| Error::invalid("encryption failed"))?;
    let mut out = Vec::with_capacity(NONCE_LEN + body.len());
    out.extend_from_slice(nonce);
    out.extend_from_slice(&body);
    Ok(out)
}

fn open_with(cipher: &XChaCha20Poly1305, aad: &[u8], sealed: &[u8], what: &str) -> Result<Vec<u8>> {
    if sealed.len() < OVERHEAD {
        return Err(Error::corrupt(format!(
            "{what}: too short to be sealed ({} bytes)",
            sealed.len()
        )));
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    cipher
        .decrypt(XNonce::from_slice(nonce), Payload { msg: body, aad })
        .map_err(|_| {
            Error::corrupt(format!(
                "{what}: authentication failed (damaged or tampered with)"
            ))
        })
}

pub const KEY_MAGIC: &[u8; 8] = b"STRAKEYF";
pub const KEY_VERSION: u32 = 1;
pub const KEYS_DIR: &str = "keys";

/// argon2id cost: 64 MiB, 3 passes, 4 lanes (RFC 9106's second recommended option). The lanes
/// are filled on parallel threads, so the wall time falls with the cores while the memory and
/// total work an attacker pays per guess stay the same.
pub const KDF_MEMORY_KIB: u32 = 64 * 1024;
pub const KDF_PASSES: u32 = 3;
pub const KDF_LANES: u32 = 4;

/// The most a key file may ask of argon2: memory, and memory x passes (the work), about ten
/// times the default cost. A key file asking for more would stall every command that opens the
/// repository.
pub const KDF_MAX_MEMORY_KIB: u32 = 1 << 20;
pub const KDF_MAX_WORK_KIB: u64 = 2 << 20;

/// Whether argon2 parameters are within what strata accepts (and creates).
pub fn kdf_cost_acceptable(memory_kib: u32, passes: u32, lanes: u32) -> bool {
    memory_kib <= KDF_MAX_MEMORY_KIB
        && passes >= 1
        && memory_kib as u64 * passes as u64 <= KDF_MAX_WORK_KIB
        && (1..=16).contains(&lanes)
}

/// A key file: the master key wrapped by one passphrase.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    pub id: String,
    pub created: String,
    pub host: String,
    /// Always "argon2id".
    pub kdf: String,
    pub memory_kib: u32,
    pub passes: u32,
    pub lanes: u32,
    /// 16 random bytes, hex.
    pub salt: String,
    /// `nonce || sealed master key || tag`, hex; the associated data is the repository id.
    pub wrapped: String,
}

fn kek(
    passphrase: &str,
    salt: &[u8],
    memory_kib: u32,
    passes: u32,
    lanes: u32,
) -> Result<XChaCha20Poly1305> {
    let params = argon2::Params::new(memory_kib, passes, lanes, Some(32))
        .map_err(|e| Error::corrupt(format!("key file: argon2 parameters: {e}")))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = [0u8; 32];
    argon
        .hash_password_into(passphrase.as_bytes(), salt, &mut out)
        .map_err(|e| Error::invalid(format!("deriving the key from the passphrase: {e}")))?;
    Ok(XChaCha20Poly1305::new((&out).into()))
}

impl KeyFile {
    /// Wraps `master` with `passphrase` for repository `repo_id`, deriving the wrapping key with
    /// `memory_kib` KiB of argon2 memory ([`KDF_MEMORY_KIB`] unless the caller wants a cheaper
    /// or costlier key file; held between 8 MiB and what a reader accepts).
    pub fn create(
        master: &[u8; 32],
        passphrase: &str,
        repo_id: &str,
        memory_kib: u32,
    ) -> Result<KeyFile> {
        if passphrase.is_empty() {
            return Err(Error::invalid("an empty passphrase is not allowed"));
        }
        let memory_kib = memory_kib.clamp(8 * 1024, KDF_MAX_WORK_KIB as u32 / KDF_PASSES);
        let mut salt = [0u8; 16];
        crate::sys::secure_random(&mut salt)?;
        let mut id = [0u8; 8];
        crate::sys::secure_random(&mut id)?;
        let mut nonce = [0u8; NONCE_LEN];
        crate::sys::secure_random(&mut nonce)?;
        let cipher = kek(passphrase, &salt, memory_kib, KDF_PASSES, KDF_LANES)?;
        let wrapped = seal_with(&cipher, &nonce, repo_id.as_bytes(), master)?;
        Ok(KeyFile {
            id: hex(&id),
            created: chrono::Local::now().to_rfc3339(),
            host: crate::sys::hostname(),
            kdf: "argon2id".into(),
            memory_kib,
            passes: KDF_PASSES,
            lanes: KDF_LANES,
            salt: hex(&salt),
            wrapped: hex(&wrapped),
        })
    }

    /// The master key, if `passphrase` is this key file's.
    pub fn unwrap_master(&self, passphrase: &str, repo_id: &str) -> Result<Option<[u8; 32]>> {
        if self.kdf != "argon2id" {
            return Err(Error::VersionUnsupported(format!(
                "key file {}: unknown key derivation {:?}",
                self.id, self.kdf
            )));
        }
        // Bounds against a hostile key file asking for unbounded work or memory.
        if !kdf_cost_acceptable(self.memory_kib, self.passes, self.lanes) {
            return Err(Error::corrupt(format!(
                "key file {}: argon2 cost of {} MiB x {} passes ({} lanes) is beyond what strata \
                 accepts (at most {} MiB, and {} MiB x passes in all); the key file is damaged \
                 or was not made by strata",
                self.id,
                self.memory_kib / 1024,
                self.passes,
                self.lanes,
                KDF_MAX_MEMORY_KIB / 1024,
                KDF_MAX_WORK_KIB / 1024
            )));
        }
        let salt = unhex(&self.salt).ok_or_else(|| Error::corrupt("key file: bad salt"))?;
        let wrapped = unhex(&self.wrapped).ok_or_else(|| Error::corrupt("key file: bad key"))?;
        let cipher = kek(passphrase, &salt, self.memory_kib, self.passes, self.lanes)?;
        match open_with(&cipher, repo_id.as_bytes(), &wrapped, "key file") {
            Ok(plain) => {
                let master: [u8; 32] = plain
                    .as_slice()
                    .try_into()
                    .map_err(|_| Error::corrupt("key file: master key of the wrong length"))?;
                Ok(Some(master))
            }
            Err(_) => Ok(None),
        }
    }

    pub fn encode(&self) -> Result<Vec<u8>> {
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::invalid(format!("encoding key file: {e}")))?;
        Ok(frame::wrap(KEY_MAGIC, KEY_VERSION, &json))
    }

    pub fn decode(bytes: &[u8], what: &str) -> Result<KeyFile> {
        let (_, json) = frame::unwrap(KEY_MAGIC, KEY_VERSION, bytes, what)?;
        serde_json::from_slice(json).map_err(|e| Error::corrupt(format!("{what}: {e}")))
    }

    pub fn object_name(&self) -> String {
        format!("{KEYS_DIR}/{}.key", self.id)
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 4096 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The passphrase in a file: its contents without the line ending at the end.
pub fn read_passphrase_file(file: &std::path::Path) -> Result<String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Error::io_path("read the password file", file, e))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}

/// Why an encrypted repository did not open when no passphrase was given.
pub const NO_PASSPHRASE: &str = "this repository is encrypted: give its passphrase in STRATA_PASSWORD \
     or in a file named by STRATA_PASSWORD_FILE (or --password-file), or run on a terminal";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_costs_are_capped() {
        assert!(kdf_cost_acceptable(KDF_MEMORY_KIB, KDF_PASSES, KDF_LANES));
        assert!(kdf_cost_acceptable(8 * 1024, 1, 1));
        // The most a reader accepted before: 4 GiB and 64 passes, over a minute of work.
        assert!(!kdf_cost_acceptable(4 << 20, 64, 4));
        assert!(!kdf_cost_acceptable(KDF_MAX_MEMORY_KIB + 1, 1, 4));
        assert!(!kdf_cost_acceptable(KDF_MAX_MEMORY_KIB, 3, 4));
        assert!(!kdf_cost_acceptable(KDF_MEMORY_KIB, 0, 4));
        assert!(!kdf_cost_acceptable(KDF_MEMORY_KIB, KDF_PASSES, 0));
    }

    #[test]
    fn key_files_carry_their_own_costs() {
        let master = [7u8; 32];
        let mut k = KeyFile::create(&master, "pw", "repo-id", KDF_MEMORY_KIB).unwrap();
        assert_eq!(
            (k.memory_kib, k.passes, k.lanes),
            (KDF_MEMORY_KIB, KDF_PASSES, KDF_LANES)
        );
        assert_eq!(k.unwrap_master("pw", "repo-id").unwrap(), Some(master));
        assert_eq!(k.unwrap_master("wrong", "repo-id").unwrap(), None);
        // The costs are part of the derivation: a file claiming other lanes does not open.
        k.lanes = 1;
        assert_eq!(k.unwrap_master("pw", "repo-id").unwrap(), None);
    }

    #[test]
    fn sealed_objects_open_only_unchanged_and_as_their_own_kind() {
        let keys = Keys::from_master(&[7u8; 32]);
        let sealed = keys
            .seal(Object::Frame, b"memory of a conversation")
            .unwrap();
        assert_eq!(sealed.len(), 24 + OVERHEAD);
        assert_eq!(
            keys.open(Object::Frame, &sealed, "x").unwrap(),
            b"memory of a conversation"
        );
        assert!(keys.open(Object::Manifest, &sealed, "x").is_err());
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(
                keys.open(Object::Frame, &bad, "x").is_err(),
                "bit flip at {i}"
            );
        }
        // Two seals of the same bytes differ (random nonces).
        assert_ne!(
            sealed,
            keys.seal(Object::Frame, b"memory of a conversation")
                .unwrap()
        );
        // Another master key opens nothing.
        assert!(
            Keys::from_master(&[8u8; 32])
                .open(Object::Frame, &sealed, "x")
                .is_err()
        );
    }

    #[test]
    fn key_files_unwrap_with_their_passphrase_only() {
        let master = [42u8; 32];
        // The least memory accepted: the test is about wrapping, not cost.
        let kf = KeyFile::create(&master, "correct horse", "repo-1", 0).unwrap();
        assert_eq!(kf.memory_kib, 8 * 1024);
        let back = KeyFile::decode(&kf.encode().unwrap(), "k").unwrap();
        assert_eq!(
            back.unwrap_master("correct horse", "repo-1").unwrap(),
            Some(master)
        );
        assert_eq!(back.unwrap_master("wrong", "repo-1").unwrap(), None);
        // Bound to its repository.
        assert_eq!(back.unwrap_master("correct horse", "repo-2").unwrap(), None);
    }

    #[test]
    fn derived_keys_differ_and_gear_tables_depend_on_the_key() {
        let a = Keys::from_master(&[1u8; 32]);
        let b = Keys::from_master(&[2u8; 32]);
        assert_ne!(a.id_key(), &a.mac);
        assert_ne!(a.gear(), b.gear());
        assert_eq!(a.gear(), a.gear());
    }
}
