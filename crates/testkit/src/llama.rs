//! A real llama.cpp `llama-server` for tests, and tiny models for it.
//!
//! The server is built from source once per machine by `scripts/llama-server` (cached
//! outside the clone, keyed by version); the models are written by the tests themselves
//! (`python/tiny_gguf.py`: llama architecture, seeded random weights, llama.cpp's own SPM
//! vocabulary), so no weights come from anywhere.
//!
//! Facts about llama-server these tests rely on (llama.cpp's `tools/server`): `/health`
//! answers 503 `{"error":{"code":503,"message":"Loading model"}}` while the model loads and
//! 200 once it is ready; `/v1/chat/completions` streams one SSE chunk per generated token and
//! reports `usage` (`prompt_tokens`, `completion_tokens`); a prompt longer than the context
//! is refused with 400 and `"type":"exceed_context_size_error"`. In router mode (started with
//! `--models-dir DIR` and no `-m`), `/health` answers 200 with no model loaded; `GET /models`
//! lists each file of DIR by name without `.gguf`, with `status.value` `unloaded`, `loading`
//! or `loaded`; `POST /models/load` and `/models/unload` with `{"model": NAME}` answer
//! `{"success":true}` at once and change the status later; a loaded model runs in a child
//! llama-server process (`--model DIR/NAME.gguf`) that unloading ends.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Where the built server and llama.cpp's vocabulary are.
#[derive(Debug, Clone)]
pub struct LlamaServer {
    /// The `llama-server` binary.
    pub binary: PathBuf,
    /// `ggml-vocab-llama-spm.gguf` from the same llama.cpp sources.
    pub vocab: PathBuf,
}

/// The llama-server build, made on first use (about 11 minutes on 2 cores, once per
/// machine). Panics, with the build's output, when it cannot be built.
pub fn server() -> LlamaServer {
    static SERVER: OnceLock<LlamaServer> = OnceLock::new();
    SERVER
        .get_or_init(|| {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/llama-server");
            let out = Command::new("bash")
                .arg(&script)
                .stderr(std::process::Stdio::inherit())
                .output()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
            assert!(
                out.status.success(),
                "{} failed (see its output above)",
                script.display()
            );
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            LlamaServer {
                binary: dir.join("bin/llama-server"),
                vocab: dir.join("ggml-vocab-llama-spm.gguf"),
            }
        })
        .clone()
}

/// The size of a tiny model.
#[derive(Debug, Clone, Copy)]
pub struct ModelSize {
    /// Embedding width.
    pub embd: u32,
    /// Transformer blocks.
    pub layers: u32,
    /// Training context length written into the model.
    pub ctx: u32,
}

impl ModelSize {
    /// About 17 MB: loads in well under a second.
    pub const TINY: ModelSize = ModelSize {
        embd: 64,
        layers: 2,
        ctx: 512,
    };
    /// About 600 MB: its loading phase (503 on `/health`) lasts long enough to observe.
    pub const SLOW_LOADING: ModelSize = ModelSize {
        embd: 1024,
        layers: 8,
        ctx: 512,
    };
}

/// A model of `size` with random weights, written once per build folder
/// (`target/test-models/`) and shared by the tests that ask for the same size.
pub fn model(size: ModelSize) -> PathBuf {
    let dir = crate::target_dir().join("test-models");
    std::fs::create_dir_all(&dir).expect("create target/test-models");
    let path = dir.join(format!(
        "tiny-{}x{}-ctx{}.gguf",
        size.embd, size.layers, size.ctx
    ));
    // One writer at a time in this process; other processes write under their own names.
    static WRITING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _writing = WRITING.lock().unwrap_or_else(|e| e.into_inner());
    if path.exists() {
        return path;
    }
    // Written under a name of its own, then renamed: concurrent tests never read half a file.
    let partial = dir.join(format!(
        "{}.{}.partial",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("model"),
        std::process::id()
    ));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/tiny_gguf.py");
    let status = Command::new(crate::python())
        .arg(&script)
        .arg(server().vocab)
        .arg(&partial)
        .args(["--embd", &size.embd.to_string()])
        .args(["--layers", &size.layers.to_string()])
        .args(["--ctx", &size.ctx.to_string()])
        .status()
        .expect("run tiny_gguf.py");
    assert!(
        status.success(),
        "could not write the test model {}",
        path.display()
    );
    std::fs::rename(&partial, &path).expect("move the model into place");
    path
}
