// The ws package ships no types; this is the part of it the example uses.
declare module 'ws' {
  const WebSocket: import('tether-client').WebSocketConstructor;
  export default WebSocket;
}
