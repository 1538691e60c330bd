//! A valid WebAssembly component of a world other than taskhost's
//! `handler-plugin`: it exports a bare `run` function and imports nothing
//! from taskhost. The host's tests load it to check that a component of the
//! wrong world is refused with a clear error rather than instantiated.

wit_bindgen::generate!({
    inline: "
        package test:other;

        world other {
            export run: func() -> u32;
        }
    ",
    world: "other",
});

/// The component's implementation of world `other`.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
struct WrongWorld;

impl Guest for WrongWorld {
    fn run() -> u32 {
        42
    }
}

#[cfg(target_arch = "wasm32")]
export!(WrongWorld);
