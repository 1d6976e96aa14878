// @switchboard/client: subscribe to Switchboard topics from a browser or Node 20.
//
//   const sb = new Switchboard({ url: 'wss://rt.example/ws', journalUrl: 'https://rt.example' });
//   const sub = sb.subscribe('post:42', { getToken, onEnvelope: (env) => render(jsonPayload(env)) });

export { Switchboard, Subscription, SwitchboardError } from './client.js';
export { Sequencer } from './sequencer.js';
export { Backoff } from './backoff.js';
export { JournalClient, JournalError, topicSegment } from './journal.js';
export { systemClock } from './clock.js';
export {
  CloseCode,
  FrameError,
  FrameType,
  Limits,
  decodeEnvelope,
  decodeJournalPage,
  decodeServerFrame,
  encodePing,
  encodeSubscribe,
  encodeUnsubscribe,
  jsonPayload,
  textPayload,
  tokenClaims,
  topicError,
} from './codec.js';
