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

/// The first row of each layer, in the table's order of layers.
fn first_of_each_layer<'a>(rows: impl IntoIterator<Item = &'a Row>) -> Vec<&'a Row> {
    let mut layers: Vec<&Row> = Vec::new();
    for r in rows {
        if !layers.iter().any(|l| l.layer == r.layer) {
            layers.push(r)
        }
    }
    layers
}

/// Chooses a level per layer (0 or a measured one) so that the model's time at `batch` is at most
/// `target_ms` with the least summed loss increase (each level's taken as at least its layer's
/// lower levels').
pub fn allocate(rows: &[Row], batch: usize, target_ms: f64) -> anyhow::Result<Allocation> {
    let rows: Vec<&Row> = rows.iter().filter(|r| r.batch == batch).collect();
    let Some(first) = rows.first() else { bail!("the sensitivity table has no timings at batch {batch}") };
    let model_ms = first.model_ms;
    let layers: Vec<&str> = first_of_each_layer(rows.iter().copied()).iter().map(|r| r.layer.as_str()).collect();
    // Each layer's options: unpruned, or one of its measured levels. A level's loss is at least
    // any lower level's: once a layer alone brings the model to chance its one-shot loss stops
    // growing (or falls), which says nothing of what training at that level would keep.
    let options: Vec<Vec<Choice>> = layers
        .iter()
        .map(|l| {
            let mut mine: Vec<&&Row> = rows.iter().filter(|r| r.layer == *l).collect();
            mine.sort_by(|a, b| a.level.total_cmp(&b.level));
            let dense_ms = mine[0].dense_ms;
            let mut worst = 0.0f64;
            std::iter::once(Choice { layer: l.to_string(), level: 0.0, ms: dense_ms, dense_ms, loss_increase: 0.0 })
                .chain(mine.iter().map(|r| {
                    worst = worst.max(r.loss_increase);
                    Choice { layer: l.to_string(), level: r.level, ms: r.ms, dense_ms, loss_increase: worst }
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

/// The recipe `base` with its GMP modifier's `final_sparsity` replaced by one target per weight it
/// prunes, chosen by [`allocate`] among those weights' layers of the table so that the model's
/// time at `batch` is at most `target_ms` (the other layers stay unpruned, their time counted).
/// The table's layers are the recipe model's prunable weights in order; their sizes must match.
pub fn allocate_recipe(base: &str, base_name: &str, rows: &[Row], batch: usize, target_ms: f64) -> anyhow::Result<(Allocation, String)> {
    let recipe = crate::recipe::Recipe::parse(base, base_name, &[])?;
    if recipe.pruning.len() != 1 {
        bail!("{base_name}: the recipe needs exactly one gmp modifier to take the per-layer targets");
    }
    let (input, classes) = recipe.nominal().map_err(|e| anyhow::anyhow!(e))?;
    let net = crate::model::Network::zeroed(&recipe.model, input, classes).map_err(|e| anyhow::anyhow!("{base_name}: {e}"))?;
    let layers = first_of_each_layer(rows);
    let prunable = net.prunable();
    if prunable.len() != layers.len() {
        bail!("{base_name}: its model has {} prunable weights; the table has {} layers", prunable.len(), layers.len());
    }
    for (&i, row) in prunable.iter().zip(&layers) {
        let p = &net.params[i];
        if p.values.len() != row.rows * row.cols {
            bail!(
                "{base_name}: parameter {} has {} weights, layer '{}' of the table {}",
                p.name,
                p.values.len(),
                row.layer,
                row.rows * row.cols
            );
        }
    }
    let gmp = &recipe.pruning[0];
    let targeted = crate::targets::resolve_params(&net, &gmp.params, &gmp.lines).map_err(|e| e.in_file(base_name))?;
    // (table layer, parameter) of each weight the modifier prunes.
    let pairs: Vec<(&str, &str)> = prunable
        .iter()
        .zip(&layers)
        .filter(|(i, _)| targeted.contains(i))
        .map(|(&i, row)| (row.layer.as_str(), net.params[i].name.as_str()))
        .collect();
    let mine: Vec<Row> = rows.iter().filter(|r| pairs.iter().any(|(l, _)| *l == r.layer)).cloned().collect();
    let allocation = allocate(&mine, batch, target_ms)?;
    let targets: Vec<String> = allocation
        .choices
        .iter()
        .map(|c| {
            let name = pairs.iter().find(|(l, _)| *l == c.layer).map(|(_, n)| *n).expect("a chosen layer is one the modifier prunes");
            format!("\"{name}\" = {}", c.level)
        })
        .collect();
    // The gmp modifier's own final_sparsity line (after its `type = "gmp"`).
    let lines: Vec<&str> = base.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.replace(' ', "") == "type=\"gmp\"")
        .and_then(|gmp| (gmp..lines.len()).find(|&i| lines[i].trim_start().starts_with("final_sparsity")))
        .with_context(|| format!("{base_name}: the gmp modifier has no final_sparsity line"))?;
    let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    out[at] = format!("final_sparsity = {{ {} }}", targets.join(", "));
    let text = out.join("\n") + "\n";
    let check = crate::recipe::Recipe::parse(&text, base_name, &[])?;
    crate::targets::check_params(&check, base_name)?;
    Ok((allocation, text))
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

    #[test]
    fn a_level_costs_at_least_what_a_lower_level_of_its_layer_costs() {
        // a's one-shot loss falls from 0.9 to 0.99 (the model already at chance): pruning a to
        // 0.99 must not look cheaper than pruning b further.
        let rows =
            [row("a", 0.9, 2.0, 4.0, 2.0), row("a", 0.99, 1.0, 4.0, 1.5), row("b", 0.9, 2.0, 4.0, 0.5), row("b", 0.99, 1.0, 4.0, 1.8)];
        // Save 5 ms: a 0.99 + b 0.9 (2.0 + 0.5, not 1.5 + 0.5) against a 0.9 + b 0.99 (3.8).
        let a = allocate(&rows, 1, 5.0).unwrap();
        assert_eq!(a.choices.iter().map(|c| c.level).collect::<Vec<_>>(), [0.99, 0.9]);
        assert!((a.estimated_loss_increase - 2.5).abs() < 1e-9);
        // Save 3 ms: b alone at 0.99 (1.8), not a alone at 0.99 (which read 1.5).
        let a = allocate(&rows, 1, 7.0).unwrap();
        assert_eq!(a.choices.iter().map(|c| c.level).collect::<Vec<_>>(), [0.0, 0.99]);
    }
}
