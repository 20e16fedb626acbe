//! Fuzzes `sandbox::proxy::clienthello::parse` with arbitrary bytes: it must never panic, and its answers
//! for a byte string and for prefixes of it must agree the way `peek` relies on (a prefix of a complete
//! hello asks for no more bytes than the rest holds; "need n more" is never followed by completion
//! with fewer; an error is final).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandbox::proxy::clienthello::{parse, Progress};

fuzz_target!(|data: &[u8]| {
    let whole = parse(data);
    // Split points derived from the input, so the fuzzer can steer them too.
    let seed = data.iter().take(8).fold(0usize, |acc, &b| {
        acc.wrapping_mul(31).wrapping_add(usize::from(b))
    });
    let cuts = [
        data.len() / 2,
        data.len().saturating_sub(1),
        seed % (data.len() + 1),
        data.len() / 4 * 3,
    ];
    for cut in cuts {
        let prefix = &data[..cut];
        match (parse(prefix), &whole) {
            (Ok(Progress::NeedAtLeast(n)), Ok(Progress::Complete(_))) => {
                assert!(
                    cut + n <= data.len(),
                    "prefix {cut} asks for {n} of {}",
                    data.len()
                );
            }
            (Ok(Progress::NeedAtLeast(n)), _) => {
                assert!(n >= 1);
                if let Some(shorter) = data.get(..cut + n - 1) {
                    assert!(!matches!(parse(shorter), Ok(Progress::Complete(_))));
                }
            }
            (Ok(Progress::Complete(early)), Ok(Progress::Complete(hello))) => {
                assert_eq!(&early, hello);
            }
            (Ok(Progress::Complete(_)), other) => {
                panic!("prefix {cut} is complete but the whole input gives {other:?}")
            }
            // An error is final: more bytes never turn it into an answer.
            (Err(e), Ok(_)) => panic!("prefix {cut} fails ({e}) but the whole input does not"),
            (Err(_), _) => {}
        }
    }
});
