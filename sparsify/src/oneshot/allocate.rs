//! Speed-aware sparsity: from a sensitivity table, the per-layer sparsities that reach a target
//! time in the engine with the least estimated loss (each layer's measured time saved and loss
//! increase taken as adding up), written as a GMP recipe with per-layer targets.

use anyhow::{Context, bail};

use super::sensitivity::Row;

/// One layer's chosen level, with what the table says it costs and saves.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub layer: String,
    pub level: f64,
    pub ms: f64,
    pub dense_ms: f64,
    pub loss_increase: f64,
}

/// The allocation: a level per layer (in the table's order), and the model's estimated time.
#[derive(Debug, Clone)]
pub struct Allocation {
    pub choices: Vec<Choice>,
    pub model_ms: f64,
    pub estimated_ms: f64,
    pub estimated_loss_increase: f64,
}

/// Resolution of the time the layers must save, for the exact search over levels.
const UNITS: usize = 2000;

/// Chooses a level per layer (0 or a measured one) so that the model's time at `batch` is at most
/// `target_ms` with the least summed loss increase.
pub fn allocate(rows: &[Row], batch: usize, target_ms: f64) -> anyhow::Result<Allocation> {
    let rows: Vec<&Row> = rows.iter().filter(|r| r.batch == batch).collect();
    let Some(first) = rows.first() else { bail!("the sensitivity table has no timings at batch {batch}") };
    let model_ms = first.model_ms;
    let mut layers: Vec<&str> = Vec::new();
    rows.iter().for_each(|r| {
        if !layers.contains(&r.layer.as_str()) {
            layers.push(&r.layer)
        }
    });
    // Each layer's options: unpruned, or one of its measured levels.
    let options: Vec<Vec<Choice>> = layers
        .iter()
        .map(|l| {
            let mine: Vec<&&Row> = rows.iter().filter(|r| r.layer == *l).collect();
            let dense_ms = mine[0].dense_ms;
            std::iter::once(Choice { layer: l.to_string(), level: 0.0, ms: dense_ms, dense_ms, loss_increase: 0.0 })
                .chain(mine.iter().map(|r| Choice {
                    layer: l.to_string(),
                    level: r.level,
                    ms: r.ms,
                    dense_ms,
                    loss_increase: r.loss_increase.max(0.0),
                }))
                .collect()
        })
        .collect();
    let need = model_ms - target_ms;
    let saved = |c: &Choice| (c.dense_ms - c.ms).max(0.0);
    let most: f64 = options.iter().map(|o| o.iter().map(saved).fold(0.0, f64::max)).sum();
    if need > most {
        bail!(
            "a time of {target_ms:.4} ms at batch {batch} is out of reach: the measured levels save at most {most:.4} of the model's {model_ms:.4} ms ({:.2}x)",
            model_ms / (model_ms - most).max(1e-12)
        );
    }
    // Least loss for at least `u` units of time saved, layer by layer (units rounded down, so
    // the estimate never overstates the saving).
    let units = |c: &Choice| if need <= 0.0 { UNITS } else { ((saved(c) / need) * UNITS as f64).floor().min(UNITS as f64) as usize };
    let mut best = vec![f64::INFINITY; UNITS + 1];
    best[0] = 0.0;
    let mut picks: Vec<Vec<(usize, usize)>> = Vec::new();
    for layer in &options {
        let mut next = vec![f64::INFINITY; UNITS + 1];
        let mut pick = vec![(0, 0); UNITS + 1];
        for (u, &loss) in best.iter().enumerate().filter(|(_, l)| l.is_finite()) {
            for (j, c) in layer.iter().enumerate() {
                let v = (u + units(c)).min(UNITS);
                if loss + c.loss_increase < next[v] {
                    next[v] = loss + c.loss_increase;
                    pick[v] = (u, j);
                }
            }
        }
        best = next;
        picks.push(pick);
    }
    if !best[UNITS].is_finite() {
        bail!("no combination of the measured levels reaches {target_ms:.4} ms at batch {batch} (try more levels)");
    }
    let mut u = UNITS;
    let mut choices = Vec::new();
    for (layer, pick) in options.iter().zip(&picks).rev() {
        let (prev, j) = pick[u];
        choices.push(layer[j].clone());
        u = prev;
    }
    choices.reverse();
    let estimated_ms = model_ms - choices.iter().map(saved).sum::<f64>();
    Ok(Allocation { estimated_loss_increase: choices.iter().map(|c| c.loss_increase).sum(), choices, model_ms, estimated_ms })
}

/// The recipe `base` with its GMP modifier's `final_sparsity` replaced by one target per layer:
/// the allocation's levels, given to the recipe model's prunable weights in order (their sizes
/// must match the table's layers).
pub fn recipe(base: &str, base_name: &str, allocation: &Allocation, rows: &[Row]) -> anyhow::Result<String> {
    let recipe = crate::recipe::Recipe::parse(base, base_name, &[])?;
    if recipe.pruning.len() != 1 {
        bail!("{base_name}: the recipe needs exactly one gmp modifier to take the per-layer targets");
    }
    let (input, classes) = recipe.nominal().map_err(|e| anyhow::anyhow!(e))?;
    let net = crate::model::Network::zeroed(&recipe.model, input, classes).map_err(|e| anyhow::anyhow!("{base_name}: {e}"))?;
    let params: Vec<&crate::model::Param> = net.prunable().into_iter().map(|i| &net.params[i]).collect();
    if params.len() != allocation.choices.len() {
        bail!("{base_name}: its model has {} prunable weights; the table has {} layers", params.len(), allocation.choices.len());
    }
    let mut targets = Vec::new();
    for (p, c) in params.iter().zip(&allocation.choices) {
        let row = rows.iter().find(|r| r.layer == c.layer).context("a chosen layer is in the table")?;
        if p.values.len() != row.rows * row.cols {
            bail!(
                "{base_name}: parameter {} has {} weights, layer '{}' of the table {}",
                p.name,
                p.values.len(),
                c.layer,
                row.rows * row.cols
            );
        }
        targets.push(format!("\"{}\" = {}", p.name, c.level));
    }
    // The gmp modifier's own final_sparsity line (after its `type = "gmp"`).
    let lines: Vec<&str> = base.lines().collect();
    let gmp = lines.iter().position(|l| l.replace(' ', "") == "type=\"gmp\"").with_context(|| format!("{base_name}: no gmp modifier"))?;
    let at = (gmp..lines.len())
        .find(|&i| lines[i].trim_start().starts_with("final_sparsity"))
        .with_context(|| format!("{base_name}: the gmp modifier has no final_sparsity line"))?;
    let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    out[at] = format!("final_sparsity = {{ {} }}", targets.join(", "));
    let text = out.join("\n") + "\n";
    let check = crate::recipe::Recipe::parse(&text, base_name, &[])?;
    crate::targets::check_params(&check, base_name)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(layer: &str, level: f64, ms: f64, dense_ms: f64, loss: f64) -> Row {
        Row {
            layer: layer.into(),
            rows: 1,
            cols: 1,
            level,
            sparsity: level,
            loss,
            loss_increase: loss,
            top1: 0.0,
            top1_change: 0.0,
            batch: 1,
            ms,
            dense_ms,
            model_ms: 10.0,
        }
    }

    #[test]
    fn the_cheapest_levels_that_reach_the_target_are_chosen() {
        // a: 4 ms, saves 2 at a loss of 0.1 or 3 at 1.0; b: 4 ms, saves 2 at 0.2 or 3 at 0.3.
        let rows = [row("a", 0.5, 2.0, 4.0, 0.1), row("a", 0.9, 1.0, 4.0, 1.0), row("b", 0.5, 2.0, 4.0, 0.2), row("b", 0.9, 1.0, 4.0, 0.3)];
        // Save 4 ms: a 0.5 + b 0.5 (0.3) beats a 0.9 + b 0.9 (1.3) and the rest.
        let a = allocate(&rows, 1, 6.0).unwrap();
        assert_eq!(a.choices.iter().map(|c| c.level).collect::<Vec<_>>(), [0.5, 0.5]);
        assert!((a.estimated_ms - 6.0).abs() < 1e-9 && (a.estimated_loss_increase - 0.3).abs() < 1e-9);
        // Save 3 ms: b alone at 0.9.
        let a = allocate(&rows, 1, 7.0).unwrap();
        assert_eq!(a.choices.iter().map(|c| c.level).collect::<Vec<_>>(), [0.0, 0.9]);
        // Nothing to save: nothing pruned.
        assert!(allocate(&rows, 1, 20.0).unwrap().choices.iter().all(|c| c.level == 0.0));
        // Beyond reach: 6 ms saved at most.
        assert!(allocate(&rows, 1, 3.0).unwrap_err().to_string().contains("out of reach"));
    }
}
