use std::collections::HashSet;
use std::time::Duration;

use argon2::password_hash::{PasswordHasher, PasswordVerifier, phc::PasswordHash};
use argon2::{Algorithm, Argon2, Params, Version};

use super::*;

/// The argon2 crate's own verdict, with its own freshly allocated memory.
fn crate_verifies(secret: &str, phc: &str) -> bool {
    let h = PasswordHash::new(phc).unwrap();
    Argon2::default()
        .verify_password(secret.as_bytes(), &h)
        .is_ok()
}

#[test]
fn hashes_are_argon2id_salted_and_verify_only_the_secret() {
    let mut memory = Memory::new();
    let a = hash("correct horse battery", &mut memory).unwrap();
    let b = hash("correct horse battery", &mut memory).unwrap();
    assert!(a.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{a}");
    assert_ne!(a, b, "salted");
    assert!(verify("correct horse battery", &a, &mut memory));
    assert!(!verify("correct horse batterz", &a, &mut memory));
    assert!(!verify("correct horse battery", "not a hash", &mut memory));
    assert!(!verify("", "", &mut memory));
    // Stored hashes stay standard PHC strings, for any other verifier.
    assert!(crate_verifies("correct horse battery", &a));
    assert!(!crate_verifies("correct horse batterz", &a));
}

/// One memory, reused dirty from check to check and across parameters,
/// gives the verdicts the argon2 crate gives with fresh memory each time.
#[test]
fn reused_memory_gives_the_argon2_crates_verdicts() {
    let made = |algorithm, version, m, t, p| {
        let params = Params::new(m, t, p, None).unwrap();
        Argon2::new(algorithm, version, params)
            .hash_password(b"password")
            .unwrap()
            .to_string()
    };
    let hashes = [
        made(Algorithm::Argon2id, Version::V0x13, MEMORY_KIB, PASSES, LANES),
        made(Algorithm::Argon2i, Version::V0x10, 64, 3, 2),
        made(Algorithm::Argon2d, Version::V0x13, 256, 1, 4),
        // Known answers from the reference implementation's test suite
        // (phc-winner-argon2, src/test.c); m=65536 is more than a slot holds.
        "$argon2id$v=19$m=65536,t=2,p=1$c29tZXNhbHQ$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc"
            .to_owned(),
        "$argon2i$v=19$m=65536,t=1,p=1$c29tZXNhbHQAAAAAAAAAAA$+r0d29hqEB0yasKr55ZgICsQGSkl0v0kgwhd+U3wyRo"
            .to_owned(),
    ];
    let mut memory = Memory::new();
    for h in &hashes {
        for secret in ["password", "sassword", ""] {
            assert_eq!(
                verify(secret, h, &mut memory),
                crate_verifies(secret, h),
                "{secret:?} against {h}"
            );
        }
        assert!(verify("password", h, &mut memory), "{h}");
    }
    // A tampered output or salt matches nothing.
    let h = &hashes[0];
    let (head, out) = h.rsplit_once('$').unwrap();
    let flipped = if out.starts_with('A') { "B" } else { "A" };
    let tampered = format!("{head}${flipped}{}", &out[1..]);
    assert!(!verify("password", &tampered, &mut memory));
    assert!(!crate_verifies("password", &tampered));
}

#[tokio::test]
async fn slots_bound_the_work_and_reuse_their_memory() {
    let slots = Slots::new(2);
    let address = |s: &mut Slot| s.memory().0.as_ptr() as usize;
    let mut a = slots.try_take().unwrap();
    let mut b = slots.try_take().unwrap();
    assert!(
        slots.try_take().is_none(),
        "two slots, two checks at a time"
    );
    assert!(slots.take(Duration::from_millis(20)).await.is_none());
    let known: HashSet<usize> = [address(&mut a), address(&mut b)].into();
    assert_eq!(known.len(), 2);
    // A slot moved into a blocking task stays taken until that task ends,
    // even when nobody awaits it any more (a client that left).
    let (release, released) = std::sync::mpsc::channel::<()>();
    let task = std::thread::spawn(move || {
        let mut held = a;
        let _ = held.memory();
        released.recv().unwrap();
    });
    drop(b);
    let mut c = slots.try_take().unwrap();
    assert!(slots.try_take().is_none(), "the moved slot is still taken");
    release.send(()).unwrap();
    task.join().unwrap();
    let mut d = slots.take(Duration::from_secs(1)).await.unwrap();
    // No check allocates: every slot taken runs in one of the two memories.
    for _ in 0..10 {
        assert!(known.contains(&address(&mut c)));
        assert!(known.contains(&address(&mut d)));
        drop(d);
        d = slots.try_take().unwrap();
    }
}

#[test]
fn generated_secrets_are_long_prefixed_and_distinct() {
    let (a, b) = (generate(), generate());
    assert!(a.starts_with(PREFIX));
    assert_eq!(a.len(), PREFIX.len() + 43);
    assert_ne!(a, b);
}
