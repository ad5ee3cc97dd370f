//! URLs as they may be shown in messages, logs and image labels: without the user info
//! (`user:password@`, a token as the user name) and without the query and fragment, which
//! often carry tokens too (pre-signed URLs).

use std::fmt;

/// A URL whose `Display` leaves out what may be secret: `https://u:p@host/a?sig=x` shows as
/// `https://host/a`. Text without a `scheme://` (a path, an scp-like Git address) shows as
/// it is.
#[derive(Clone, Copy)]
pub struct RedactedUrl<'a>(&'a str);

impl<'a> RedactedUrl<'a> {
    pub fn new(url: &'a str) -> RedactedUrl<'a> {
        RedactedUrl(url)
    }
}

impl fmt::Display for RedactedUrl<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some((scheme, rest)) = self.0.split_once("://") else {
            return f.write_str(self.0);
        };
        let rest = rest.split(['?', '#']).next().unwrap_or(rest);
        let (authority, path) = rest
            .split_once('/')
            .map_or((rest, None), |(a, p)| (a, Some(p)));
        let host = authority
            .rsplit_once('@')
            .map_or(authority, |(_, host)| host);
        write!(f, "{scheme}://{host}")?;
        match path {
            Some(path) => write!(f, "/{path}"),
            None => Ok(()),
        }
    }
}

/// As `Display`: a redacted URL is never shown whole, not even by `{:?}`.
impl fmt::Debug for RedactedUrl<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::RedactedUrl;

    fn shown(url: &str) -> String {
        RedactedUrl::new(url).to_string()
    }

    #[test]
    fn user_info_queries_and_fragments_are_left_out() {
        assert_eq!(
            shown("https://user:pw@host/a/f.zip?X-Amz-Signature=abc"),
            "https://host/a/f.zip"
        );
        assert_eq!(shown("ssh://git@host:22/a.git"), "ssh://host:22/a.git");
        assert_eq!(shown("https://tok@host/a.git#main"), "https://host/a.git");
        assert_eq!(shown("http://host:8080"), "http://host:8080");
        assert_eq!(shown("https://u:p@host/"), "https://host/");
        assert_eq!(shown("git@host:team/a.git"), "git@host:team/a.git");
        assert!(!format!("{:?}", RedactedUrl::new("https://u:secret@h/")).contains("secret"));
    }
}
