//! Client secrets: generated with a recognisable prefix, stored only as
//! argon2id PHC hashes, checked in constant time.
//!
//! Every hash and check runs in the working memory of one of a few
//! [`Slots`], allocated once at start-up and reused. A fresh 19 MiB block a
//! check is what the argon2 crate's own hasher and verifier would allocate:
//! after the first is freed glibc raises its mmap threshold past that size
//! and serves the next ones from the heap, where they fragment and are never
//! given back; a few hundred failed logins grew a gateway by a gigabyte
//! (docs/memory.md).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use base64::Engine;
use rand::RngCore;
use subtle::ConstantTimeEq;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// argon2id with OWASP's first recommended setting: 19 MiB, 2 passes, 1 lane.
/// About 25 ms on one core of the reference machine; see docs/security.md.
pub const MEMORY_KIB: u32 = 19 * 1024;
pub const PASSES: u32 = 2;
pub const LANES: u32 = 1;

/// Generated secrets start with this, so secret scanners can recognise a leaked one.
pub const PREFIX: &str = "tgs_";

const SALT_BYTES: usize = 16;
const OUTPUT_BYTES: usize = 32;

/// argon2 working memory for [`MEMORY_KIB`]; its content between uses is
/// irrelevant (the first pass overwrites every block before reading it).
pub struct Memory(Box<[Block]>);

impl Memory {
    pub fn new() -> Memory {
        // Written here, so the pages are resident from the start, not on first use.
        Memory(vec![Block::new(); MEMORY_KIB as usize].into_boxed_slice())
    }
}

impl Default for Memory {
    fn default() -> Self {
        Memory::new()
    }
}

fn params() -> Result<Params, String> {
    Params::new(MEMORY_KIB, PASSES, LANES, Some(OUTPUT_BYTES)).map_err(|e| e.to_string())
}

/// Hashes a secret into an argon2id PHC string (salted).
pub fn hash(secret: &str, memory: &mut Memory) -> Result<String, String> {
    let params = params()?;
    let mut salt = [0u8; SALT_BYTES];
    rand::rng().fill_bytes(&mut salt);
    let mut out = [0u8; OUTPUT_BYTES];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password_into_with_memory(secret.as_bytes(), &salt, &mut out, &mut memory.0[..])
        .map_err(|e| e.to_string())?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(|e| e.to_string())?,
        salt: Some(Salt::new(&salt).map_err(|e| e.to_string())?),
        hash: Some(Output::new(&out).map_err(|e| e.to_string())?),
    };
    Ok(phc.to_string())
}

/// True when `secret` matches the PHC string, compared in constant time. An
/// unparsable hash costs nothing and matches nothing. A hash made with more
/// memory than a slot holds (written elsewhere, with other parameters) gets
/// its own block for that check.
pub fn verify(secret: &str, phc: &str, memory: &mut Memory) -> bool {
    let Ok(h) = PasswordHash::new(phc) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&h.salt, &h.hash) else {
        return false;
    };
    let hasher = || -> Option<Argon2<'static>> {
        let algorithm = Algorithm::new(h.algorithm.as_str()).ok()?;
        let version = Version::try_from(h.version.unwrap_or(Version::default().into())).ok()?;
        let params = Params::try_from(&h).ok()?;
        Some(Argon2::new(algorithm, version, params))
    };
    let Some(hasher) = hasher() else {
        return false;
    };
    let mut out = [0u8; Output::MAX_LENGTH];
    let Some(out) = out.get_mut(..expected.len()) else {
        return false;
    };
    let needed = hasher.params().block_count();
    let computed = if needed <= memory.0.len() {
        hasher.hash_password_into_with_memory(secret.as_bytes(), salt, out, &mut memory.0[..])
    } else {
        let mut own = vec![Block::new(); needed];
        hasher.hash_password_into_with_memory(secret.as_bytes(), salt, out, &mut own[..])
    };
    computed.is_ok() && bool::from(out[..].ct_eq(expected.as_bytes()))
}

/// A fresh client secret: 256 random bits, base64url, with [`PREFIX`].
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "{PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// The few argon2 slots of a process, each with its working memory: at most
/// one hash or check per slot at a time, so argon2 never holds more than
/// slots × 19 MiB, all of it allocated at start-up.
pub struct Slots {
    permits: Arc<Semaphore>,
    spare: Arc<Mutex<Vec<Memory>>>,
}

/// One slot, taken: owned, so the blocking task it moves into keeps it (and
/// the slot stays taken) until the work is done, even when the request that
/// asked for it is gone.
pub struct Slot {
    memory: Option<Memory>,
    spare: Arc<Mutex<Vec<Memory>>>,
    _permit: OwnedSemaphorePermit,
}

impl Slots {
    /// `count` slots (at least one), their memory allocated now.
    pub fn new(count: usize) -> Slots {
        let count = count.max(1);
        Slots {
            permits: Arc::new(Semaphore::new(count)),
            spare: Arc::new(Mutex::new((0..count).map(|_| Memory::new()).collect())),
        }
    }

    /// One slot a core: argon2 is all computation.
    pub fn per_core() -> Slots {
        Slots::new(std::thread::available_parallelism().map_or(2, |n| n.get()))
    }

    /// A slot, or None when all stay taken for `patience`.
    pub async fn take(&self, patience: Duration) -> Option<Slot> {
        let permit = tokio::time::timeout(patience, self.permits.clone().acquire_owned())
            .await
            .ok()?
            .ok()?;
        Some(self.with(permit))
    }

    /// A slot if one is free now (start-up, tests).
    pub fn try_take(&self) -> Option<Slot> {
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        Some(self.with(permit))
    }

    fn with(&self, permit: OwnedSemaphorePermit) -> Slot {
        // A permit guarantees a spare memory (each slot gives its own back
        // before its permit), and a plain Vec cannot be left half-changed.
        let memory = self
            .spare
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        Slot {
            memory: Some(memory.unwrap_or_default()),
            spare: self.spare.clone(),
            _permit: permit,
        }
    }
}

impl Slot {
    pub fn memory(&mut self) -> &mut Memory {
        self.memory.get_or_insert_with(Memory::new)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(memory) = self.memory.take() {
            self.spare
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(memory);
        }
    }
}

#[cfg(test)]
#[path = "secret_tests.rs"]
mod tests;
