//! Query parameters of API requests (`?dest=URL&volume=V`): percent-decoded
//! values, each given at most once.

use super::error::ApiError;

/// One query parameter, percent-decoded; `None` if absent.
pub fn param(query: &str, name: &str) -> Result<Option<String>, ApiError> {
    let mut found = None;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if k == name {
            if found.is_some() {
                return Err(ApiError::bad_request(format!(
                    "query parameter {name:?} given twice"
                )));
            }
            found = Some(v.into_owned());
        }
    }
    Ok(found)
}

/// Like [`param`], but absence is a bad request.
pub fn required(query: &str, name: &str) -> Result<String, ApiError> {
    param(query, name)?
        .ok_or_else(|| ApiError::bad_request(format!("query parameter {name:?} is required")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded() {
        let url = "s3://b/p?endpoint=http://h:1&backup=x&volume=v";
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("backup", url)
            .append_pair("volume", "v")
            .finish();
        assert_eq!(param(&query, "backup").unwrap().as_deref(), Some(url));
        assert_eq!(param(&query, "volume").unwrap().as_deref(), Some("v"));
        assert_eq!(param(&query, "dest").unwrap(), None);
        assert!(param("a=1&a=2", "a").is_err());
        assert!(required("", "dest").is_err());
    }
}
