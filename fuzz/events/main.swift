// libFuzzer target: consumed event payloads, decoded and validated as a worker does before
// any handler (HandlerRegistry: decode, then `validate()`). The first byte picks the event
// type of the catalog; the rest is the body. An event that passes validation must encode
// again (a worker re-publishes what it derives) and decode to the same value.
import Foundation

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let bytes = Array(UnsafeRawBufferPointer(start: start, count: count))
    guard let first = bytes.first else { return 0 }
    let type = Catalog.eventTypes[Int(first) % Catalog.eventTypes.count]
    check(type, Data(bytes.dropFirst()))
    return 0
}

func check<E: Event>(_ type: E.Type, _ body: Data) {
    let envelope = EventEnvelope(routingKey: E.routingKey, appId: "fuzz", body: body)
    guard let event = try? envelope.decode(E.self), (try? event.validate()) != nil else { return }
    let again = try! EventJSON.encode(event)
    precondition(try! EventJSON.decode(E.self, from: again) == event)
}
