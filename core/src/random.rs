//! The one random source for everything secret or unguessable: session ids, cancel keys, join
//! tokens, sign-in state, PKCE verifiers, certificate serials. It is the operating system's
//! CSPRNG (through ring) and it fails closed: when the OS cannot give randomness the process
//! aborts, rather than hand out an id or key someone could predict.

use std::io::Write as _;

/// `N` bytes from the OS CSPRNG; aborts the process if there are none.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).is_err() {
        let _ = writeln!(
            std::io::stderr(),
            "gatehouse: the operating system's random number generator failed; stopping rather than use predictable secrets"
        );
        std::process::abort();
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_differ() {
        // 2^-128 chance of a false failure.
        assert_ne!(random_bytes::<16>(), random_bytes::<16>());
        assert_ne!(random_bytes::<16>(), [0u8; 16]);
    }
}
