//! scenefin-guest: what components share on the Spin side of the contract in `wit/world.wit`.
//!
//! spin-sdk 7 covers `spin:key-value`, `spin:variables` and `wasi:http`; it vendors `wasi:keyvalue` but exposes no
//! Rust API for it, so the atomics (increment, compare-and-swap) and batch operations are generated here from the
//! project's own WIT files, with spin-sdk's wit-bindgen runtime.

/// Generated bindings for `wasi:keyvalue@0.2.0-draft2` (`store`, `atomics`, `batch`).
#[allow(missing_docs, clippy::all)]
pub mod wasi_keyvalue {
    spin_sdk::wit_bindgen::generate!({
        runtime_path: "spin_sdk::wit_bindgen::rt",
        path: "../../wit",
        world: "scenefin:platform/keyvalue",
        generate_all,
    });

    pub use wasi::keyvalue::{atomics, batch, store};
}
