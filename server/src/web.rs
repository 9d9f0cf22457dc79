//! Serves the built web client (`client-web/ui/dist`, made by
//! `client-web/build-web.sh`) at `/`: files as they are (gzip-precompressed
//! copies when the browser accepts them; `.wasm` as `application/wasm`),
//! every other path that is not an API path gets `index.html` (the UI routes
//! itself). Vite's content-hashed `/assets/*` are cached for a year; the rest
//! is revalidated on every load so a new release shows at once.

use std::path::{Path, PathBuf};

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::{Json, Router};
use tower::ServiceExt;
use tower_http::services::{ServeDir, ServeFile};
use tsunagu_protocol::frames::HttpError;
use tsunagu_protocol::ErrorCode;

/// Where the built UI is: the configured directory, else the first of
/// `./client-web/ui/dist`, `<repo>/client-web/ui/dist` for a binary in
/// `<repo>/target/<profile>/`, and `web/` beside the binary that holds an
/// `index.html`.
pub fn resolve_root(configured: Option<&Path>) -> Option<PathBuf> {
    if let Some(dir) = configured {
        return Some(dir.to_path_buf());
    }
    let mut candidates = vec![PathBuf::from("client-web/ui/dist")];
    if let Some(bin_dir) = std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf)) {
        // target/<profile>/tsunagu-server, or target/<profile>/deps/… for tests.
        for up in [2, 3] {
            if let Some(repo) = bin_dir.ancestors().nth(up) {
                candidates.push(repo.join("client-web/ui/dist"));
            }
        }
        candidates.push(bin_dir.join("web"));
    }
    candidates.into_iter().find(|d| d.join("index.html").is_file())
}

const CSP: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self' 'unsafe-inline'; \
    img-src 'self' blob: data:; connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'self'; \
    frame-ancestors 'none'; form-action 'self'";

/// The routes of the web client, to merge into the main router (they are its
/// fallback, so every API route wins).
pub fn routes<S: Clone + Send + Sync + 'static>(web_root: Option<&Path>) -> Router<S> {
    let Some(root) = resolve_root(web_root) else {
        tracing::warn!("no built web client found (run client-web/build-web.sh or pass --web-root); / explains how to build it");
        return Router::new().fallback(not_built);
    };
    tracing::info!(web_root = %root.display(), "serving the web client");
    // A path that names a file (`/assets/app-1a2b.js`) is that file or 404;
    // any other path is a page of the UI: index.html.
    let files = ServeDir::new(&root).precompressed_gzip();
    let pages = files.clone().fallback(ServeFile::new(root.join("index.html")).precompressed_gzip());
    Router::new().fallback(move |req: Request| {
        let names_file = req.uri().path().rsplit('/').next().is_some_and(|last| last.contains('.'));
        let (files, pages) = (files.clone(), pages.clone());
        async move {
            if names_file {
                serve(files, req).await
            } else {
                serve(pages, req).await
            }
        }
    })
}

fn is_api(path: &str) -> bool {
    path == "/v1" || path.starts_with("/v1/")
}

async fn serve<F>(dir: ServeDir<F>, req: Request) -> Response
where
    ServeDir<F>: tower::Service<Request, Error = std::convert::Infallible> + Clone,
    <ServeDir<F> as tower::Service<Request>>::Response: IntoResponse,
{
    let path = req.uri().path().to_owned();
    if is_api(&path) {
        let body = HttpError { code: ErrorCode::InvalidArgument, message: format!("no such endpoint: {path}") };
        return (StatusCode::NOT_FOUND, Json(body)).into_response();
    }
    let Ok(resp) = dir.oneshot(req).await;
    let mut resp = resp.into_response();
    let immutable = path.starts_with("/assets/") && resp.status().is_success();
    let h = resp.headers_mut();
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(if immutable { "public, max-age=31536000, immutable" } else { "no-cache" }),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    let is_html = h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|t| t.starts_with("text/html"));
    if is_html {
        h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    }
    resp
}

async fn not_built(req: Request) -> Response {
    if is_api(req.uri().path()) {
        let body = HttpError { code: ErrorCode::InvalidArgument, message: format!("no such endpoint: {}", req.uri().path()) };
        return (StatusCode::NOT_FOUND, Json(body)).into_response();
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Html(
            "<!doctype html><meta charset=utf-8><title>Tsunagu</title>\
             <p>The web client is not built. Run <code>client-web/build-web.sh</code> \
             (or <code>ops/run.sh</code>, which builds it), or start the server with \
             <code>--web-root DIR</code>.</p>",
        ),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    async fn get(app: &Router, path: &str, gzip: bool) -> Response {
        let mut req = Request::builder().uri(path);
        if gzip {
            req = req.header(header::ACCEPT_ENCODING, "gzip");
        }
        app.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap()
    }

    #[tokio::test]
    async fn serves_files_spa_fallback_and_api_404() {
        let dir = std::env::temp_dir().join(format!("tsunagu-web-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(dir.join("assets")).unwrap();
        std::fs::write(dir.join("index.html"), "<!doctype html><title>T</title>").unwrap();
        std::fs::write(dir.join("assets/app-1234.wasm"), b"\0asm\x01\0\0\0").unwrap();
        std::fs::write(dir.join("assets/app-1234.wasm.gz"), b"gz").unwrap();
        let app: Router = routes(Some(&dir));

        let r = get(&app, "/assets/app-1234.wasm", false).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/wasm");
        assert_eq!(r.headers()[header::CACHE_CONTROL], "public, max-age=31536000, immutable");
        let r = get(&app, "/assets/app-1234.wasm", true).await;
        assert_eq!(r.headers()[header::CONTENT_ENCODING], "gzip");
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/wasm");

        for path in ["/", "/timelines/abc", "/invite"] {
            let r = get(&app, path, false).await;
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            assert!(r.headers()[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/html"));
            assert_eq!(r.headers()[header::CACHE_CONTROL], "no-cache");
            assert!(r.headers()[header::CONTENT_SECURITY_POLICY].to_str().unwrap().contains("wasm-unsafe-eval"));
        }
        let r = get(&app, "/v1/nope", false).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert!(r.headers()[header::CONTENT_TYPE].to_str().unwrap().starts_with("application/json"));
        let r = get(&app, "/assets/missing-1.js", false).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "a missing file is not the UI");
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-cache");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
