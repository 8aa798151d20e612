//! Push (client-server API "Push Notifications"): the user's push rules
//! ([`rules`], pure, and [`store`], on the user's shard), pushers
//! ([`pushers`]), evaluating rules for every new event on the room's owner
//! shard ([`engine`], grouping members by rule set in [`eval`]), the counts
//! and `/notifications` that come of it ([`counts`]), and delivery to push
//! gateways ([`gateway`] over [`http_client`]).

pub mod counts;
pub mod engine;
pub mod eval;
pub mod gateway;
pub mod http_client;
pub mod pushers;
pub mod rules;
pub mod store;
pub mod unread;
