//! The RabbitMQ bus (lapin): one exclusive queue per worker bound to a fan-out exchange.
//!
//! Not built yet: the `amqp` issue fills this in. Until then selecting `bus.kind = "amqp"`
//! fails at start with a clear error.

use std::rc::Rc;

use super::{BusError, Ingress, Routed};
use crate::config::BusConfig;

pub struct Consumer;

impl Consumer {
    pub async fn start(_cfg: &BusConfig, _index: usize, _ingress: Rc<dyn Ingress>) -> Result<Self, BusError> {
        Err(BusError::Amqp("the amqp bus is not available in this build".into()))
    }
    pub fn watch(&self, _topic: &str) {}
    pub fn unwatch(&self, _topic: &str) {}
}

pub struct Publisher;

impl Publisher {
    pub async fn connect(_cfg: &BusConfig) -> Result<Self, BusError> {
        Err(BusError::Amqp("the amqp bus is not available in this build".into()))
    }
    pub async fn publish(&mut self, _batch: &[Routed]) -> Result<(), BusError> {
        Err(BusError::Amqp("the amqp bus is not available in this build".into()))
    }
}
