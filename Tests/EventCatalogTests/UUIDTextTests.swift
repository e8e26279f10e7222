import EventCatalog
import Foundation
import Testing

@Suite("UUID text without sscanf/snprintf")
struct UUIDTextTests {
    @Test("formats and parses exactly like Foundation, in both cases, for many UUIDs")
    func matchesFoundation() {
        for _ in 0..<2000 {
            let id = UUID()
            #expect(id.lowercaseText == id.uuidString.lowercased())
            #expect(UUID(text: id.uuidString) == id)
            #expect(UUID(text: id.uuidString.lowercased()) == id)
        }
        let fixed = UUID(uuidString: "00000000-0000-4000-8000-00000000000A")!
        #expect(fixed.lowercaseText == "00000000-0000-4000-8000-00000000000a")
    }

    @Test("refuses what Foundation refuses", arguments: [
        "", "not-a-uuid", "00000000-0000-4000-8000-00000000000", "00000000-0000-4000-8000-00000000000g",
        "00000000+0000-4000-8000-000000000000", "000000000-000-4000-8000-000000000000",
        "00000000-0000-4000-8000-0000000000000", "{00000000-0000-4000-8000-000000000000}",
    ])
    func refuses(text: String) {
        #expect(UUID(uuidString: text) == nil)
        #expect(UUID(text: text) == nil)
    }
}
