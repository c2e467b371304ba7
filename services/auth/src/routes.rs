//! REST routes of the auth service and their OpenAPI document at
//! `/v1/openapi.json`.

use crate::AppState;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// Largest request body, bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// The auth service's OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(title = "Herald auth", description = "Users, session tokens (EdDSA JWTs) and their JWKS; channel authorization for pusher-js and channel tokens; rooms, DMs and channel membership. Request bodies are limited to 16384 bytes. Errors are {\"error\": {\"code\", \"message\"}}."),
    paths(
        crate::users::put_user, crate::users::get_user, crate::users::batch, crate::users::search,
        crate::tokens::issue, crate::tokens::jwks, crate::tokens::rotate,
        crate::channel_auth::pusher_auth, crate::channel_auth::user_auth,
        crate::channel_auth::channel_token,
        crate::rooms::create, crate::rooms::join, crate::rooms::leave, crate::rooms::destroy,
        crate::rooms::room_members, crate::rooms::my_rooms, crate::rooms::open_dm,
        crate::rooms::my_dms, crate::rooms::app_add_member, crate::rooms::app_remove_member,
        crate::rooms::app_list_members,
    ),
    components(schemas(
        crate::users::User, crate::users::UserBody, crate::users::BatchBody, crate::users::BatchAnswer,
        crate::users::SearchPage, crate::tokens::TokenRequest, crate::tokens::TokenAnswer,
        crate::tokens::Rotated, herald_server::token::Jwk, herald_server::token::JwkSet,
        crate::channel_auth::PusherAuthBody, crate::channel_auth::PusherAuthAnswer,
        crate::channel_auth::UserAuthBody, crate::channel_auth::UserAuthAnswer,
        crate::channel_auth::ChannelTokenRequest, crate::channel_auth::ChannelTokenAnswer,
        crate::rooms::Room, crate::rooms::CreateRoom, crate::rooms::JoinRoom,
        crate::rooms::MembershipAnswer, crate::rooms::RoomList, crate::rooms::OpenDm,
        crate::rooms::Dm, crate::rooms::DmList, crate::membership::Member,
        crate::membership::MembersPage,
    )),
    modifiers(&Security)
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "app_basic",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Basic)),
        );
        components.add_security_scheme(
            "admin_bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        let mut session = Http::new(HttpAuthScheme::Bearer);
        session.bearer_format = Some("JWT".into());
        session.description = Some(
            "A session token of the app (POST /v1/apps/{app}/users/{user_id}/session-tokens); \
             single use: its first channel or user authorization binds it to that socket"
                .into(),
        );
        components.add_security_scheme("session_bearer", SecurityScheme::Http(session));
    }
}

/// Every REST route.
pub(crate) fn router() -> Router<AppState> {
    let browser = Router::new()
        .merge(crate::channel_auth::router())
        .merge(crate::rooms::router())
        .layer(herald_server::http::browser_cors());
    Router::new()
        .merge(browser)
        .merge(crate::rooms::app_router())
        .merge(crate::users::router())
        .merge(crate::tokens::router())
        .route(
            "/v1/openapi.json",
            get(|| async { Json(ApiDoc::openapi()) }),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

#[cfg(test)]
mod tests {
    use super::ApiDoc;
    use utoipa::OpenApi;

    #[test]
    fn the_document_states_the_bounds_the_server_enforces() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let s = &doc["components"]["schemas"];
        assert_eq!(
            s["UserBody"]["properties"]["name"]["maxLength"],
            crate::users::MAX_NAME_LEN
        );
        assert_eq!(
            s["UserBody"]["properties"]["avatar_url"]["maxLength"],
            crate::users::MAX_AVATAR_URL_LEN
        );
        assert_eq!(
            s["UserBody"]["properties"]["avatar_url"]["pattern"],
            crate::users::AVATAR_URL_PATTERN
        );
        assert_eq!(
            s["BatchBody"]["properties"]["user_ids"]["maxItems"],
            crate::users::MAX_BATCH
        );
        assert_eq!(
            s["TokenRequest"]["properties"]["grants"]["maxItems"],
            herald_proto::token::MAX_GRANTS
        );
        let put = &doc["paths"]["/v1/apps/{app}/users/{user_id}"]["put"];
        let uid = put["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "user_id")
            .unwrap();
        assert_eq!(uid["schema"]["maxLength"], herald_proto::MAX_USER_ID_LEN);
        let search = &doc["paths"]["/v1/apps/{app}/users"]["get"];
        let limit = search["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "limit")
            .unwrap();
        assert_eq!(limit["schema"]["maximum"], crate::users::MAX_LIMIT);
        assert!(doc["paths"]["/.well-known/jwks.json"]["get"].is_object());
    }

    fn param(doc: &serde_json::Value, path: &str, method: &str, name: &str) -> serde_json::Value {
        doc["paths"][path][method]["parameters"]
            .as_array()
            .unwrap_or_else(|| panic!("{method} {path} has no parameters"))
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{method} {path} has no parameter {name}"))["schema"]
            .clone()
    }

    #[test]
    fn the_document_states_the_patterns_the_server_enforces() {
        use herald_proto::channel::{
            GRANT_PATTERN, MAX_GRANT_LEN, MEMBER_CHANNEL_PATTERN, MIN_MEMBER_CHANNEL_LEN,
        };
        use herald_proto::{MAX_USER_ID_LEN, USER_ID_PATTERN};
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let s = &doc["components"]["schemas"];

        // Membership routes take private and presence channels only.
        let member = "/v1/apps/{app}/channels/{channel}/members/{user_id}";
        let members = "/v1/apps/{app}/channels/{channel}/members";
        for (path, method) in [(member, "put"), (member, "delete"), (members, "get")] {
            let channel = param(&doc, path, method, "channel");
            assert_eq!(
                channel["pattern"], MEMBER_CHANNEL_PATTERN,
                "{method} {path}"
            );
            assert_eq!(
                channel["minLength"], MIN_MEMBER_CHANNEL_LEN,
                "{method} {path}"
            );
        }

        // Every user id, wherever it is given, states UserId's rule.
        let user_ids = [
            ("/v1/apps/{app}/users/{user_id}", "put", "user_id"),
            ("/v1/apps/{app}/users/{user_id}", "get", "user_id"),
            (
                "/v1/apps/{app}/users/{user_id}/session-tokens",
                "post",
                "user_id",
            ),
            (member, "put", "user_id"),
            (member, "delete", "user_id"),
            ("/v1/apps/{app}/rooms", "post", "as_user"),
            ("/v1/apps/{app}/rooms", "get", "as_user"),
            ("/v1/apps/{app}/rooms/join", "post", "as_user"),
            ("/v1/apps/{app}/rooms/{room}", "delete", "as_user"),
            ("/v1/apps/{app}/rooms/{room}/leave", "post", "as_user"),
            ("/v1/apps/{app}/rooms/{room}/members", "get", "as_user"),
            ("/v1/apps/{app}/rooms/{room}/members", "get", "after"),
            ("/v1/apps/{app}/dms", "post", "as_user"),
            ("/v1/apps/{app}/dms", "get", "as_user"),
            (members, "get", "after"),
        ];
        for (path, method, name) in user_ids {
            let p = param(&doc, path, method, name);
            assert_eq!(p["pattern"], USER_ID_PATTERN, "{method} {path} {name}");
            assert_eq!(p["minLength"], 1, "{method} {path} {name}");
            assert_eq!(p["maxLength"], MAX_USER_ID_LEN, "{method} {path} {name}");
        }
        for schema in [&s["UserIdText"], &s["OpenDm"]["properties"]["user_id"]] {
            assert_eq!(schema["pattern"], USER_ID_PATTERN);
            assert_eq!(schema["minLength"], 1);
            assert_eq!(schema["maxLength"], MAX_USER_ID_LEN);
        }
        assert_eq!(
            s["BatchBody"]["properties"]["user_ids"]["items"]["$ref"],
            "#/components/schemas/UserIdText"
        );

        // Grants.
        assert_eq!(
            s["TokenRequest"]["properties"]["grants"]["items"]["$ref"],
            "#/components/schemas/GrantText"
        );
        assert_eq!(s["GrantText"]["pattern"], GRANT_PATTERN);
        assert_eq!(s["GrantText"]["maxLength"], MAX_GRANT_LEN);

        // Names and the prefix search.
        for name in [
            &s["UserBody"]["properties"]["name"],
            &s["CreateRoom"]["properties"]["name"],
        ] {
            assert_eq!(name["pattern"], crate::users::NAME_PATTERN);
            assert_eq!(name["minLength"], 1);
            assert_eq!(name["maxLength"], crate::users::MAX_NAME_LEN);
        }
        let prefix = param(&doc, "/v1/apps/{app}/users", "get", "prefix");
        assert_eq!(prefix["pattern"], crate::users::PREFIX_PATTERN);
        assert_eq!(prefix["maxLength"], crate::users::MAX_NAME_LEN);
    }

    #[test]
    fn the_document_states_the_403_of_the_app_acting_for_no_user() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        for (path, method) in [
            ("/v1/apps/{app}/rooms", "post"),
            ("/v1/apps/{app}/rooms", "get"),
            ("/v1/apps/{app}/rooms/join", "post"),
            ("/v1/apps/{app}/rooms/{room}/leave", "post"),
            ("/v1/apps/{app}/dms", "post"),
            ("/v1/apps/{app}/dms", "get"),
        ] {
            let d = &doc["paths"][path][method]["responses"]["403"]["description"];
            assert!(
                d.as_str().is_some_and(|d| d.contains("without as_user")),
                "{method} {path}: {d}"
            );
        }
    }
}
