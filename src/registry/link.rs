//! Pages of a registry's lists: the `Link` headers (RFC 8288) that name the next one.

use reqwest::header::HeaderMap;

/// The path of the next page from the `Link` headers (RFC 8288), e.g.
/// `Link: </v2/app/tags/list?n=1000&last=v9>; rel="next"`.
///
/// Every `Link` header is read, and each header value may hold several comma-separated
/// links; the first whose `rel` (quoted or not, possibly a space-separated list) names
/// `next` wins. An absolute target keeps only its path and query, on the endpoint already
/// in use.
pub(super) fn next_page(headers: &HeaderMap) -> Option<String> {
    let target = headers
        .get_all(reqwest::header::LINK)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(split_outside_quotes::<','>)
        .find_map(|link| {
            let (target, params) = parse_link(link)?;
            let is_next = split_outside_quotes::<';'>(params).any(|param| {
                let (name, value) = param.split_once('=').unwrap_or((param, ""));
                name.trim().eq_ignore_ascii_case("rel")
                    && value
                        .trim()
                        .trim_matches('"')
                        .split_ascii_whitespace()
                        .any(|rel| rel.eq_ignore_ascii_case("next"))
            });
            is_next.then_some(target)
        })?;
    match reqwest::Url::parse(target) {
        Ok(url) => Some(match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_string(),
        }),
        Err(_) if target.is_empty() => None,
        Err(_) => Some(target.to_string()),
    }
}

/// One link `<target>; params` split into the target and the parameters after it.
fn parse_link(link: &str) -> Option<(&str, &str)> {
    let rest = link.trim().strip_prefix('<')?;
    let (target, params) = rest.split_once('>')?;
    Some((target.trim(), params))
}

/// Splits on `SEP` outside double quotes and outside `<...>`, so a comma in a quoted
/// parameter or in a link target does not split a link.
fn split_outside_quotes<const SEP: char>(value: &str) -> impl Iterator<Item = &str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut bracketed, mut escaped) = (0, false, false, false);
    for (i, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' if !bracketed => quoted = !quoted,
            '<' if !quoted => bracketed = true,
            '>' if !quoted => bracketed = false,
            c if c == SEP && !quoted && !bracketed => {
                parts.push(&value[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&value[start..]);
    parts.into_iter().filter(|part| !part.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link_headers(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(reqwest::header::LINK, value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn next_page_reads_quoted_and_unquoted_rel() {
        let quoted = link_headers(&[r#"</v2/app/tags/list?n=2&last=b>; rel="next""#]);
        assert_eq!(
            next_page(&quoted).as_deref(),
            Some("/v2/app/tags/list?n=2&last=b")
        );
        let unquoted = link_headers(&["</v2/app/tags/list?last=b>;rel=next"]);
        assert_eq!(
            next_page(&unquoted).as_deref(),
            Some("/v2/app/tags/list?last=b")
        );
        let upper = link_headers(&[r#"</v2/app/tags/list?last=c> ; REL = "Next""#]);
        assert_eq!(
            next_page(&upper).as_deref(),
            Some("/v2/app/tags/list?last=c")
        );
        let list = link_headers(&[r#"</v2/app/tags/list?last=d>; rel="prefetch next""#]);
        assert_eq!(
            next_page(&list).as_deref(),
            Some("/v2/app/tags/list?last=d")
        );
    }

    #[test]
    fn next_page_splits_links_on_commas_across_headers() {
        let one_header = link_headers(&[
            r#"</v2/app/tags/list?last=a>; rel="prev"; title="a, b", </v2/app/tags/list?last=z>; rel="next""#,
        ]);
        assert_eq!(
            next_page(&one_header).as_deref(),
            Some("/v2/app/tags/list?last=z")
        );
        let two_headers = link_headers(&[
            r#"</v2/app/tags/list?last=a>; rel="prev""#,
            r#"<https://registry.local:5000/v2/app/tags/list?n=10&last=y>; rel="next""#,
        ]);
        assert_eq!(
            next_page(&two_headers).as_deref(),
            Some("/v2/app/tags/list?n=10&last=y")
        );
        let comma_in_target = link_headers(&[r#"</v2/app/tags/list?last=a,b>; rel=next"#]);
        assert_eq!(
            next_page(&comma_in_target).as_deref(),
            Some("/v2/app/tags/list?last=a,b")
        );
    }

    #[test]
    fn next_page_ignores_other_relations() {
        assert_eq!(next_page(&HeaderMap::new()), None);
        let prev = link_headers(&[r#"</v2/app/tags/list?last=a>; rel="prev""#]);
        assert_eq!(next_page(&prev), None);
        let not_rel = link_headers(&[r#"</v2/app/tags/list?last=a>; title="rel=next""#]);
        assert_eq!(next_page(&not_rel), None);
        let nextish = link_headers(&[r#"</v2/app/tags/list?last=a>; rel="next-archive""#]);
        assert_eq!(next_page(&nextish), None);
        let malformed = link_headers(&[r#"/v2/app/tags/list?last=a; rel="next""#]);
        assert_eq!(next_page(&malformed), None);
    }
}
