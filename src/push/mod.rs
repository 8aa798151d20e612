//! Push (client-server API "Push Notifications"): the user's push rules
//! ([`rules`], pure, and [`store`], on the user's shard) and pushers
//! ([`pushers`]). Evaluating rules for new events, notification counts and
//! the push gateway client are later work (issue 11, item 3).

pub mod pushers;
pub mod rules;
pub mod store;
