//! The PRNG actor: serves `seed` requests from a [`Pool`], mixing in the time
//! of day at each request as Postfix does. Entropy sources and the exchange
//! file are added by the PRNG-manager work (they feed [`Pool::mix`]).

use crate::prng::{Pool, MAX_SEED};
use actix::prelude::*;

/// The actor.
#[derive(Debug)]
pub struct PrngActor {
    pool: Pool,
}

impl PrngActor {
    /// An actor with a pool keyed from the operating system.
    pub fn new() -> Self {
        PrngActor {
            pool: Pool::from_os(),
        }
    }
}

impl Default for PrngActor {
    fn default() -> Self {
        Self::new()
    }
}

impl Actor for PrngActor {
    type Context = Context<Self>;
}

/// `size` bytes of seed (1..=255; the server checks the range first).
#[derive(Message)]
#[rtype(result = "Vec<u8>")]
pub struct Seed(pub usize);

impl Handler<Seed> for PrngActor {
    type Result = MessageResult<Seed>;
    fn handle(&mut self, msg: Seed, _ctx: &mut Context<Self>) -> Self::Result {
        self.pool.mix_time_of_day();
        let mut out = vec![0u8; msg.0.min(MAX_SEED)];
        self.pool.fill(&mut out);
        MessageResult(out)
    }
}

/// Live reload hook: the PRNG work (entropy source, exchange file, periods)
/// applies `tls_random_*` changes here; until then the pool needs nothing.
impl Handler<super::ConfigChanged> for PrngActor {
    type Result = ();
    fn handle(&mut self, _msg: super::ConfigChanged, _ctx: &mut Context<Self>) {}
}
