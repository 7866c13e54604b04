//! Parsing `kubectl -l` label selector strings (`app=web,tier!=db,env in (a,b),!legacy`)
//! for offline exports, where no apiserver evaluates them.

use std::collections::BTreeSet;

use kube::core::{Expression, Selector};

/// Parses a label selector string; the error names the offending term.
pub fn parse(input: &str) -> Result<Selector, String> {
    let mut exprs = Vec::new();
    for term in split_terms(input) {
        let term = term.trim();
        if term.is_empty() {
            continue;
        }
        exprs.push(parse_term(term).ok_or_else(|| format!("cannot parse selector term {term:?}"))?);
    }
    Ok(exprs.into_iter().collect())
}

/// Splits at commas outside parentheses.
fn split_terms(s: &str) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0i32, 0, Vec::new());
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn parse_term(t: &str) -> Option<Expression> {
    let key_ok = |k: &str| {
        !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
    };
    if let Some(k) = t.strip_prefix('!') {
        return key_ok(k.trim()).then(|| Expression::DoesNotExist(k.trim().into()));
    }
    for (op, negate) in [(" notin ", true), (" in ", false)] {
        if let Some((k, rest)) = t.split_once(op) {
            let values = rest.trim().strip_prefix('(')?.strip_suffix(')')?;
            let set: BTreeSet<String> = values
                .split(',')
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .collect();
            let k = k.trim();
            if !key_ok(k) {
                return None;
            }
            return Some(if negate {
                Expression::NotIn(k.into(), set)
            } else {
                Expression::In(k.into(), set)
            });
        }
    }
    for (op, eq) in [("!=", false), ("==", true), ("=", true)] {
        if let Some((k, v)) = t.split_once(op) {
            let (k, v) = (k.trim(), v.trim());
            if !key_ok(k) {
                return None;
            }
            return Some(if eq {
                Expression::Equal(k.into(), v.into())
            } else {
                Expression::NotEqual(k.into(), v.into())
            });
        }
    }
    key_ok(t).then(|| Expression::Exists(t.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::SelectorExt;
    use std::collections::BTreeMap;

    #[test]
    fn selector_parse_table() {
        let labels: BTreeMap<String, String> = [("app", "web"), ("env", "prod")]
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        let cases = [
            ("app=web", true),
            ("app==web,env=prod", true),
            ("app!=web", false),
            ("env in (prod, staging)", true),
            ("env notin (prod)", false),
            ("app", true),
            ("!app", false),
            ("!legacy", true),
            ("", true),
        ];
        for (sel, expected) in cases {
            assert_eq!(parse(sel).unwrap().matches(&labels), expected, "{sel}");
        }
        assert!(parse("env in prod").is_err());
    }
}
