//! What a recipe's modifiers act on: their `params` and `ignore` patterns resolved against a
//! network's parameters, with an error that names the recipe line where they do not fit it.

use regex::Regex;

use crate::model::Network;
use crate::quant::{QuantLayer, QuantState};
use crate::recipe::{FinalSparsity, Lines, Quantization, Recipe, RecipeError, WeightScheme};

/// The token that targets every prunable weight, as in SparseML.
pub const ALL_PRUNABLE: &str = "__ALL_PRUNABLE__";

/// A modifier whose patterns do not fit the model: the field, the message, and the field's line
/// in the recipe file where the recipe was read from one.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct TargetError {
    pub field: &'static str,
    pub message: String,
    pub line: Option<usize>,
}

impl TargetError {
    fn new(field: &'static str, lines: &Lines, message: String) -> TargetError {
        TargetError { field, message, line: lines.of(field) }
    }

    /// As a recipe error about `file`.
    pub fn in_file(self, file: &str) -> RecipeError {
        RecipeError { file: file.to_string(), line: self.line, message: self.to_string() }
    }
}

/// `*` matches any run of characters, `?` any one character.
pub fn glob(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    fn rec(p: &[char], n: &[char]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some('*'), _) => rec(&p[1..], n) || (!n.is_empty() && rec(p, &n[1..])),
            (Some('?'), Some(_)) => rec(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => rec(&p[1..], &n[1..]),
            _ => false,
        }
    }
    rec(&p, &n)
}

/// The indices of `names` that `pattern` matches: a `re:` regular expression, else a name or
/// glob.
fn matching(pattern: &str, names: &[(usize, String)]) -> Result<Vec<usize>, String> {
    if let Some(re) = pattern.strip_prefix("re:") {
        let re = Regex::new(re).map_err(|e| format!("bad regular expression '{re}': {e}"))?;
        return Ok(names.iter().filter(|(_, n)| re.is_match(n)).map(|(i, _)| *i).collect());
    }
    Ok(names.iter().filter(|(_, n)| glob(pattern, n)).map(|(i, _)| *i).collect())
}

/// Parameter indices matched by `patterns` (names, `*`/`?` globs, `re:` regular expressions, or
/// `__ALL_PRUNABLE__`), in order; a pattern that matches nothing, or a parameter that is not a
/// prunable weight, is an error about the modifier's `params` (at `lines`).
pub fn resolve_params(net: &Network, patterns: &[String], lines: &Lines) -> Result<Vec<usize>, TargetError> {
    let err = |message: String| TargetError::new("params", lines, message);
    let names: Vec<(usize, String)> = net.params.iter().map(|p| p.name.clone()).enumerate().collect();
    let mut out = Vec::new();
    for p in patterns {
        let matched = if p == ALL_PRUNABLE { net.prunable() } else { matching(p, &names).map_err(err)? };
        if matched.is_empty() {
            let all: Vec<&str> = names.iter().map(|(_, n)| n.as_str()).collect();
            return Err(err(format!("'{p}' matches no parameter of this model ({})", all.join(", "))));
        }
        if let Some(&b) = matched.iter().find(|&&i| !net.params[i].prunable) {
            return Err(err(format!("'{p}' matches '{}', which is not a prunable weight", net.params[b].name)));
        }
        out.extend(matched);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// The parameters each gradual pruning modifier targets: none targeted by two, and per-parameter
/// targets only for parameters the modifier targets.
pub fn gradual(recipe: &Recipe, net: &Network) -> Result<Vec<Vec<usize>>, TargetError> {
    let targets: Vec<Vec<usize>> = recipe.pruning.iter().map(|g| resolve_params(net, &g.params, &g.lines)).collect::<Result<_, _>>()?;
    let mut seen = vec![false; net.params.len()];
    for (g, targets) in recipe.pruning.iter().zip(&targets) {
        if let Some(&t) = targets.iter().find(|&&t| std::mem::replace(&mut seen[t], true)) {
            return Err(TargetError::new("params", &g.lines, format!("'{}' is targeted by two gmp modifiers", net.params[t].name)));
        }
        if let FinalSparsity::PerParam(m) = &g.final_sparsity
            && let Some(k) = m.keys().find(|k| !targets.iter().any(|&t| &net.params[t].name == *k))
        {
            let message = format!("'{k}' is not among the parameters this modifier targets");
            return Err(TargetError::new("final_sparsity", &g.lines, message));
        }
    }
    Ok(targets)
}

/// The parameters each constant-pruning modifier holds.
pub fn constant(recipe: &Recipe, net: &Network) -> Result<Vec<Vec<usize>>, TargetError> {
    recipe.constant_pruning.iter().map(|c| resolve_params(net, &c.params, &c.lines)).collect()
}

/// The quantization state for `net` under a recipe's modifier (switched off until training
/// reaches `start_epoch`): every prunable weight's layer but those `ignore` names (globs or `re:`
/// expressions over layer names, `.weight` optional); a pattern that matches no layer is an error.
pub fn quant_state(q: &Quantization, net: &Network) -> Result<QuantState, TargetError> {
    let err = |message: String| TargetError::new("ignore", &q.lines, message);
    let weights = net.prunable();
    let layers: Vec<(usize, String)> = weights.iter().map(|&i| (i, net.params[i].name.trim_end_matches(".weight").to_string())).collect();
    let mut ignored = Vec::new();
    for pattern in &q.ignore {
        // Globs name layers with or without `.weight`; regular expressions match layer names.
        let over_layers = if pattern.starts_with("re:") { pattern.as_str() } else { pattern.trim_end_matches(".weight") };
        let matched = matching(over_layers, &layers).map_err(err)?;
        if matched.is_empty() {
            let names: Vec<&str> = layers.iter().map(|(_, n)| n.as_str()).collect();
            return Err(err(format!("'{pattern}' matches no layer of this model ({})", names.join(", "))));
        }
        ignored.extend(matched);
    }
    Ok(QuantState {
        per_channel: q.weights == WeightScheme::PerChannel,
        averaging: q.observer_averaging as f32,
        layers: weights.into_iter().filter(|i| !ignored.contains(i)).map(|weight| QuantLayer { weight, range: None }).collect(),
        active: false,
        observe: false,
    })
}

/// Checks every modifier's patterns against `net`.
pub fn check(recipe: &Recipe, net: &Network) -> Result<(), TargetError> {
    gradual(recipe, net)?;
    constant(recipe, net)?;
    recipe.quantization.as_ref().map_or(Ok(()), |q| quant_state(q, net).map(|_| ()))
}

/// Checks the recipe's patterns against the parameters of its model (built for the input and
/// classes it names); errors name `file` and the modifier's line.
pub fn check_params(recipe: &Recipe, file: &str) -> Result<(), RecipeError> {
    let in_file = |message: String| RecipeError { file: file.to_string(), line: None, message };
    let (input, classes) = recipe.nominal().map_err(in_file)?;
    let net = Network::zeroed(&recipe.model, input, classes).map_err(in_file)?;
    check(recipe, &net).map_err(|e| e.in_file(file))
}

#[cfg(test)]
mod tests {
    #[test]
    fn globs() {
        assert!(super::glob("fc*.weight", "fc1.weight"));
        assert!(super::glob("conv?.weight", "conv2.weight"));
        assert!(!super::glob("fc*.weight", "fc1.bias"));
    }
}
