//! A JSON body that may be left out: [`OptionalJson`]. actix-web's `Option<Json<T>>` answers
//! `None` for a body that fails to parse, so a misspelt or unknown field would be ignored and
//! the defaults used; here only a request without a body gets the defaults, and a body that
//! is there is parsed as `Json<T>` parses it (the content type, `http.body_limit`, the error
//! shape of [`super::error::json_error`]).

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, web};
use serde::de::DeserializeOwned;

/// The body as `T`, or `T::default()` when the request has none.
#[derive(Debug)]
pub struct OptionalJson<T>(pub T);

impl<T> OptionalJson<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

/// No `Content-Length` (or `0`) and no `Transfer-Encoding`: nothing follows the head.
fn has_no_body(req: &HttpRequest) -> bool {
    let h = req.headers();
    let length = h
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    match length {
        Some(l) => l == "0",
        None => !h.contains_key(header::TRANSFER_ENCODING),
    }
}

impl<T: DeserializeOwned + Default + 'static> FromRequest for OptionalJson<T> {
    type Error = actix_web::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        if has_no_body(req) {
            return Box::pin(std::future::ready(Ok(OptionalJson(T::default()))));
        }
        let json = web::Json::<T>::from_request(req, payload);
        Box::pin(async move { json.await.map(|j| OptionalJson(j.into_inner())) })
    }
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Default, PartialEq, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        #[serde(default)]
        force: bool,
    }

    async fn extract(req: TestRequest) -> Result<Body, actix_web::Error> {
        let (req, mut payload) = req.to_http_parts();
        OptionalJson::<Body>::from_request(&req, &mut payload)
            .await
            .map(OptionalJson::into_inner)
    }

    fn json(text: &'static str) -> TestRequest {
        TestRequest::post()
            .insert_header((header::CONTENT_TYPE, "application/json"))
            .set_payload(text)
    }

    /// No body: the defaults. A body: parsed, and refused when a field is unknown or of the
    /// wrong type — where `Option<Json<T>>` would answer the defaults.
    #[actix_rt::test]
    async fn only_a_missing_body_gets_the_defaults() {
        assert_eq!(
            extract(TestRequest::post()).await.ok(),
            Some(Body::default())
        );
        assert_eq!(
            extract(json(r#"{"force": true}"#)).await.ok(),
            Some(Body { force: true })
        );
        for bad in [r#"{"forse": true}"#, r#"{"force": "yes"}"#, "{"] {
            assert!(extract(json(bad)).await.is_err(), "{bad}");
        }
        // A body that is not declared JSON is not taken for one.
        let plain = TestRequest::post().set_payload(r#"{"force": true}"#);
        assert!(extract(plain).await.is_err());
    }
}
