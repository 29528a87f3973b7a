//! Arithmetic in recipe fields: numbers, variable names, `+ - * /`, unary minus and parentheses,
//! as in `"num_epochs * 0.6"` or `"pruning_end - 2"`.

use std::collections::BTreeMap;

/// Evaluates `text` with `vars`; the error says what is wrong.
pub fn eval(text: &str, vars: &BTreeMap<String, f64>) -> Result<f64, String> {
    let tokens = tokenize(text)?;
    let mut p = Parser { tokens: &tokens, pos: 0, vars, depth: 0 };
    let v = p.sum()?;
    if p.pos != tokens.len() {
        return Err(format!("unexpected '{}' in expression \"{text}\"", tokens[p.pos]));
    }
    Ok(v)
}

fn tokenize(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if "+-*/()".contains(c) {
            out.push(c.to_string());
            i += 1;
        } else if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == '.') {
                // Allow exponents such as 5e-4.
                if (chars[i] == 'e' || chars[i] == 'E') && chars[start].is_ascii_digit() && i + 1 < chars.len() && chars[i + 1] == '-' {
                    i += 1;
                }
                i += 1;
            }
            out.push(chars[start..i].iter().collect());
        } else {
            return Err(format!("unexpected character '{c}' in expression \"{text}\""));
        }
    }
    Ok(out)
}

struct Parser<'a> {
    tokens: &'a [String],
    pos: usize,
    vars: &'a BTreeMap<String, f64>,
    /// Nesting of parentheses and unary minuses, bounded so that no expression overflows the stack.
    depth: usize,
}

/// Deepest nesting of parentheses and unary minuses an expression may have.
const MAX_DEPTH: usize = 64;

impl Parser<'_> {
    fn peek(&self) -> Option<&str> {
        self.tokens.get(self.pos).map(String::as_str)
    }
    fn sum(&mut self) -> Result<f64, String> {
        let mut v = self.product()?;
        while let Some(op @ ("+" | "-")) = self.peek() {
            let plus = op == "+";
            self.pos += 1;
            let r = self.product()?;
            v = if plus { v + r } else { v - r };
        }
        Ok(v)
    }
    fn product(&mut self) -> Result<f64, String> {
        let mut v = self.unary()?;
        while let Some(op @ ("*" | "/")) = self.peek() {
            let times = op == "*";
            self.pos += 1;
            let r = self.unary()?;
            if !times && r == 0.0 {
                return Err("division by zero".into());
            }
            v = if times { v * r } else { v / r };
        }
        Ok(v)
    }
    /// Runs `f` one level deeper, or fails past `MAX_DEPTH`.
    fn nested(&mut self, f: impl FnOnce(&mut Self) -> Result<f64, String>) -> Result<f64, String> {
        if self.depth >= MAX_DEPTH {
            return Err(format!("expression nested more than {MAX_DEPTH} deep"));
        }
        self.depth += 1;
        let v = f(self);
        self.depth -= 1;
        v
    }
    fn unary(&mut self) -> Result<f64, String> {
        if self.peek() == Some("-") {
            self.pos += 1;
            return self.nested(|p| Ok(-p.unary()?));
        }
        self.atom()
    }
    fn atom(&mut self) -> Result<f64, String> {
        let tok = self.peek().ok_or("expression ends too early")?.to_string();
        self.pos += 1;
        if tok == "(" {
            let v = self.nested(Self::sum)?;
            if self.peek() != Some(")") {
                return Err("missing ')'".into());
            }
            self.pos += 1;
            return Ok(v);
        }
        if let Ok(v) = tok.parse::<f64>() {
            return Ok(v);
        }
        self.vars.get(&tok).copied().ok_or_else(|| {
            let known: Vec<&str> = self.vars.keys().map(String::as_str).collect();
            format!("unknown variable '{tok}' (defined: {})", if known.is_empty() { "none".into() } else { known.join(", ") })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_and_variables() {
        let vars: BTreeMap<String, f64> = [("epochs".to_string(), 30.0), ("lr".to_string(), 0.1)].into();
        assert_eq!(eval("epochs * 0.6", &vars).unwrap(), 18.0);
        assert_eq!(eval("(epochs - 10) / 4 + -1", &vars).unwrap(), 4.0);
        assert_eq!(eval("5e-4", &vars).unwrap(), 5e-4);
        assert!(eval("epochs +", &vars).is_err());
        assert!(eval("nope * 2", &vars).unwrap_err().contains("unknown variable 'nope'"));
        assert!(eval("1 / 0", &vars).is_err());
    }
}
