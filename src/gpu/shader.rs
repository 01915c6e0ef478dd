//! The shader library: every file under `shaders/` embedded at compile time, a small
//! `#import` preprocessor, and naga validation whose errors point at the lines as written.
//!
//! A line `#import common/rng` pastes `shaders/common/rng.wgsl` in place, once per module.
//! Tile shapes and other compile-time choices come from a generated header of `const`
//! declarations ([`Header`]); problem sizes are WGSL `override` constants set per pipeline.
//!
//! `#if NAME` / `#else` / `#endif` keep or drop lines by a header constant (non-zero keeps),
//! for what WGSL cannot select by a constant: element types of bindings (`f32` or `f16`) and
//! `enable` directives. `enable` lines are moved before the header, where WGSL wants them.
//! `#for I in 0..FM` / `#endfor` repeats its lines for each value, `{I}` replaced by it (bounds:
//! literals or header constants), for per-fragment variables that a WGSL loop over an array
//! would leave to the driver to keep out of local memory.

use crate::{Error, Result};

/// One embedded WGSL file: its path under `shaders/` without `.wgsl`, and its text.
#[derive(Clone, Copy, Debug)]
pub struct ShaderFile {
    /// e.g. `"linear"` or `"common/rng"`.
    pub name: &'static str,
    /// The file's text.
    pub source: &'static str,
}

macro_rules! shader_files {
    ($($name:literal),* $(,)?) => {
        /// Every file under `shaders/`. A test checks that this list and the directory agree.
        pub static SHADERS: &[ShaderFile] = &[
            $(ShaderFile { name: $name, source: include_str!(concat!("../../shaders/", $name, ".wgsl")) }),*
        ];
    };
}

shader_files!(
    "common/rng",
    "common/act",
    "linear",
    "mppi",
    "planner",
    "rng_fill",
    "two_hot",
    "policy",
    "policy_loss",
    "gemm",
    "norm_act",
    "loss",
    "optim",
    "td",
    "common/coop_gemm",
    "common/linear_io",
    "gemm_coop",
    "linear_coop",
    "cast",
    "common/bins",
    "common/gemm_params",
);

/// Look up an embedded file by name.
pub fn source(name: &str) -> Option<&'static str> {
    SHADERS.iter().find(|s| s.name == name).map(|s| s.source)
}

/// Compile-time constants put before a module's text as `const NAME: u32 = V;` lines.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Header(pub Vec<(&'static str, u32)>);

impl Header {
    /// Set constant `key` to `value` (added if absent).
    pub fn set(&mut self, key: &'static str, value: u32) {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(kv) => kv.1 = value,
            None => self.0.push((key, value)),
        }
    }

    /// Header text.
    pub fn render(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("const {k}: u32 = {v}u;\n"))
            .collect()
    }
}

/// A module after preprocessing, with a map from its lines back to the files they came from.
#[derive(Clone, Debug)]
pub struct Preprocessed {
    /// The joined WGSL.
    pub text: String,
    /// For line i (0-based) of `text`: (file, 1-based line in that file).
    pub origins: Vec<(String, u32)>,
}

impl Preprocessed {
    /// Where line `line` (1-based) of the joined text came from, as `file:line`. A line past
    /// the text (a parser that ran out of input) is the last line's origin, where the
    /// unfinished code is.
    pub fn origin(&self, line: u32) -> String {
        let last = self.origins.len().saturating_sub(1);
        match self
            .origins
            .get((line.saturating_sub(1) as usize).min(last))
        {
            Some((f, l)) => format!("{f}:{l}"),
            None => format!("<end>:{line}"),
        }
    }
}

/// Join `name` with its imports, after `header`. `resolve` finds imported files; the library
/// itself resolves to [`source`], user code may add its own files.
pub fn preprocess_with(
    name: &str,
    text: &str,
    header: &Header,
    resolve: &dyn Fn(&str) -> Option<String>,
) -> Result<Preprocessed> {
    let mut out = Preprocessed {
        text: String::new(),
        origins: Vec::new(),
    };
    for (i, line) in header.render().lines().enumerate() {
        out.text.push_str(line);
        out.text.push('\n');
        out.origins.push(("<header>".to_string(), i as u32 + 1));
    }
    let mut seen = vec![name.to_string()];
    let mut conds = Vec::new();
    expand(
        name, text, header, resolve, &mut seen, &mut out, &mut conds, 0,
    )?;
    // WGSL wants `enable` directives before any declaration, the header's included.
    let mut enables = Preprocessed {
        text: String::new(),
        origins: Vec::new(),
    };
    let mut rest = Preprocessed {
        text: String::new(),
        origins: Vec::new(),
    };
    for (line, origin) in out.text.lines().zip(out.origins) {
        let to = if line.trim_start().starts_with("enable ") {
            &mut enables
        } else {
            &mut rest
        };
        to.text.push_str(line);
        to.text.push('\n');
        to.origins.push(origin);
    }
    enables.text.push_str(&rest.text);
    enables.origins.extend(rest.origins);
    Ok(enables)
}

/// The text of library shader `name`: from `$POMPC_SHADER_DIR/name.wgsl` where that variable
/// is set and the file exists, otherwise the embedded file. The override is for kernel work on
/// a machine without a Rust toolchain (a GPU host): one build runs several versions of a
/// shader, each from its own folder. Pipelines are cached per process, so set it before the
/// first pipeline is built.
pub fn library_source(name: &str) -> Option<String> {
    if let Some(dir) = std::env::var_os("POMPC_SHADER_DIR") {
        let path = std::path::Path::new(&dir).join(format!("{name}.wgsl"));
        if let Ok(text) = std::fs::read_to_string(path) {
            return Some(text);
        }
    }
    source(name).map(str::to_string)
}

/// [`preprocess_with`] for a library shader (see [`library_source`] for where it is read).
pub fn preprocess(name: &str, header: &Header) -> Result<Preprocessed> {
    let text = library_source(name).ok_or_else(|| Error::Shader {
        name: name.to_string(),
        message: "no such shader in shaders/".into(),
    })?;
    preprocess_with(name, &text, header, &library_source)
}

#[allow(clippy::too_many_arguments)]
fn expand(
    name: &str,
    text: &str,
    header: &Header,
    resolve: &dyn Fn(&str) -> Option<String>,
    seen: &mut Vec<String>,
    out: &mut Preprocessed,
    conds: &mut Vec<bool>,
    depth: usize,
) -> Result<()> {
    if depth > 16 {
        return Err(Error::Shader {
            name: name.to_string(),
            message: "#import nesting deeper than 16".into(),
        });
    }
    let open = conds.len();
    let err = |i: usize, m: &str| Error::Shader {
        name: name.to_string(),
        message: format!("{name}:{}: {m}", i + 1),
    };
    let lines = unroll(
        name,
        text.lines()
            .enumerate()
            .map(|(i, l)| (l.to_string(), i))
            .collect(),
        header,
    )?;
    for (line, i) in &lines {
        let (line, i) = (line.as_str(), *i);
        let trimmed = line.trim();
        if let Some(rest) = trimmed.strip_prefix("#if ") {
            let key = rest.trim();
            let v = header.0.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
            let v = v.ok_or_else(|| err(i, &format!("#if of {key:?}, not in the header")))?;
            conds.push(v != 0);
            continue;
        }
        if trimmed == "#else" || trimmed == "#endif" {
            if conds.len() <= open {
                return Err(err(i, &format!("{trimmed} without #if")));
            }
            if trimmed == "#else" {
                let last = conds.len() - 1;
                conds[last] = !conds[last];
            } else {
                conds.pop();
            }
            continue;
        }
        if !conds.iter().all(|c| *c) {
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix("#import") {
            let target = rest.trim().trim_matches('"');
            if target.is_empty() {
                return Err(Error::Shader {
                    name: name.to_string(),
                    message: format!("{name}:{}: #import without a file name", i + 1),
                });
            }
            if seen.iter().any(|s| s == target) {
                continue;
            }
            let sub = resolve(target).ok_or_else(|| Error::Shader {
                name: name.to_string(),
                message: format!("{name}:{}: #import of unknown file {target:?}", i + 1),
            })?;
            seen.push(target.to_string());
            expand(target, &sub, header, resolve, seen, out, conds, depth + 1)?;
            continue;
        }
        out.text.push_str(line);
        out.text.push('\n');
        out.origins.push((name.to_string(), i as u32 + 1));
    }
    if conds.len() != open {
        return Err(Error::Shader {
            name: name.to_string(),
            message: format!("{name}: #if without #endif"),
        });
    }
    Ok(())
}

/// Most repetitions of one `#for` block.
pub const MAX_FOR_COUNT: u32 = 4096;
/// Most bytes of a module after `#for` expansion: far beyond any kernel, small enough that a
/// runaway expansion fails at once instead of exhausting memory or stalling the compiler.
pub const MAX_EXPANDED_BYTES: usize = 16 << 20;

/// Expand `#for NAME in A..B` ... `#endfor` blocks (A and B literals or header constants): the
/// body once per value, with `{NAME}` replaced by it. For what WGSL cannot index by a loop
/// counter without spilling: separate variables per cooperative-matrix fragment. A block of
/// more than [`MAX_FOR_COUNT`] repetitions, or an expansion past [`MAX_EXPANDED_BYTES`], is an
/// error.
fn unroll(
    name: &str,
    lines: Vec<(String, usize)>,
    header: &Header,
) -> Result<Vec<(String, usize)>> {
    let mut budget = MAX_EXPANDED_BYTES;
    unroll_within(name, lines, header, &mut budget, 0)
}

// Nested `#for` blocks deeper than this are an error (the expansion recurses per level).
const MAX_FOR_DEPTH: usize = 8;

fn unroll_within(
    name: &str,
    lines: Vec<(String, usize)>,
    header: &Header,
    budget: &mut usize,
    depth: usize,
) -> Result<Vec<(String, usize)>> {
    let err = |i: usize, m: String| Error::Shader {
        name: name.to_string(),
        message: format!("{name}:{}: {m}", i + 1),
    };
    let bound = |i: usize, v: &str| -> Result<u32> {
        let v = v.trim();
        v.parse::<u32>()
            .ok()
            .or_else(|| header.0.iter().find(|(k, _)| *k == v).map(|(_, x)| *x))
            .ok_or_else(|| {
                err(
                    i,
                    format!("#for bound {v:?} is neither a number nor in the header"),
                )
            })
    };
    let mut out = Vec::with_capacity(lines.len());
    let mut at = 0;
    while at < lines.len() {
        let (line, i) = &lines[at];
        let Some(spec) = line.trim().strip_prefix("#for ") else {
            if line.trim() == "#endfor" {
                return Err(err(*i, "#endfor without #for".into()));
            }
            out.push(lines[at].clone());
            at += 1;
            continue;
        };
        let (var, range) = spec
            .split_once(" in ")
            .ok_or_else(|| err(*i, format!("#for {spec:?}: expected `#for NAME in A..B`")))?;
        let (lo, hi) = range
            .split_once("..")
            .ok_or_else(|| err(*i, format!("#for range {range:?}: expected A..B")))?;
        let (lo, hi) = (bound(*i, lo)?, bound(*i, hi)?);
        if depth >= MAX_FOR_DEPTH {
            return Err(err(
                *i,
                format!("#for blocks nested deeper than {MAX_FOR_DEPTH}"),
            ));
        }
        if hi.saturating_sub(lo) > MAX_FOR_COUNT {
            return Err(err(
                *i,
                format!(
                    "#for {} in {lo}..{hi}: {} repetitions, at most {MAX_FOR_COUNT}",
                    var.trim(),
                    hi - lo
                ),
            ));
        }
        let mut open = 0;
        let mut end = None;
        for (j, (l, _)) in lines.iter().enumerate().skip(at + 1) {
            let t = l.trim();
            if t.starts_with("#for ") {
                open += 1;
            } else if t == "#endfor" {
                if open == 0 {
                    end = Some(j);
                    break;
                }
                open -= 1;
            }
        }
        let end = end.ok_or_else(|| err(*i, "#for without #endfor".into()))?;
        let key = format!("{{{}}}", var.trim());
        for v in lo..hi {
            let body: Vec<(String, usize)> = lines[at + 1..end]
                .iter()
                .map(|(l, n)| (l.replace(&key, &v.to_string()), *n))
                .collect();
            let body = unroll_within(name, body, header, budget, depth + 1)?;
            let bytes: usize = body.iter().map(|(l, _)| l.len() + 1).sum();
            *budget = budget.checked_sub(bytes).ok_or_else(|| {
                err(
                    *i,
                    format!(
                        "#for {} in {lo}..{hi} expands past {MAX_EXPANDED_BYTES} bytes",
                        var.trim()
                    ),
                )
            })?;
            out.extend(body);
        }
        at = end + 1;
    }
    Ok(out)
}

/// Parse and validate with naga. Errors name the file and line as written.
pub fn validate(name: &str, pre: &Preprocessed) -> Result<(naga::Module, naga::valid::ModuleInfo)> {
    let module = naga::front::wgsl::parse_str(&pre.text).map_err(|e| Error::Shader {
        name: name.to_string(),
        message: describe(
            pre,
            e.message(),
            e.location(&pre.text),
            &e.emit_to_string(&pre.text),
        ),
    })?;
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    )
    .validate(&module)
    .map_err(|e| {
        let loc = e.location(&pre.text);
        Error::Shader {
            name: name.to_string(),
            message: describe(
                pre,
                &e.as_inner().to_string(),
                loc,
                &e.emit_to_string(&pre.text),
            ),
        }
    })?;
    Ok((module, info))
}

fn describe(
    pre: &Preprocessed,
    msg: &str,
    loc: Option<naga::SourceLocation>,
    full: &str,
) -> String {
    match loc {
        Some(l) => {
            let lines = pre.text.lines().count();
            let src_line = pre
                .text
                .lines()
                .nth(l.line_number as usize - 1)
                .unwrap_or("");
            // Past the last line, the column means nothing: say where the text ended instead.
            let at = if l.line_number as usize > lines {
                format!("{} (at the end of the text)", pre.origin(l.line_number))
            } else {
                format!("{}:{}", pre.origin(l.line_number), l.line_position)
            };
            format!(
                "{at}: {msg}\n    {}\n(naga's report on the preprocessed text follows)\n{full}",
                src_line.trim()
            )
        }
        None => format!("{msg}\n{full}"),
    }
}
