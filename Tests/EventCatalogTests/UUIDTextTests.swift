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

    @Test("random UUIDs are version 4, RFC 4122 variant, and do not repeat")
    func random() {
        var seen = Set<UUID>()
        var ones = [Int](repeating: 0, count: 128)
        for _ in 0..<4000 {
            let id = UUID.random()
            let text = id.lowercaseText
            let chars = Array(text)
            #expect(chars[14] == "4")
            #expect("89ab".contains(chars[19]))
            #expect(UUID(uuidString: text) == id)
            seen.insert(id)
            withUnsafeBytes(of: id.uuid) { raw in
                for bit in 0..<128 where raw[bit / 8] & (0x80 >> (bit % 8)) != 0 { ones[bit] += 1 }
            }
        }
        #expect(seen.count == 4000)
        // Every bit that is not fixed by the version and variant is set about half the time.
        let fixed: Set<Int> = [48, 49, 50, 51, 64, 65]
        for bit in 0..<128 where !fixed.contains(bit) {
            #expect((1700...2300).contains(ones[bit]), "bit \(bit) was set \(ones[bit]) times in 4000")
        }
    }

    @Test("random UUIDs drawn from many threads at once do not repeat")
    func randomConcurrently() async {
        let ids = await withTaskGroup(of: [UUID].self) { group in
            for _ in 0..<8 { group.addTask { (0..<3000).map { _ in UUID.random() } } }
            return await group.reduce(into: [UUID]()) { $0 += $1 }
        }
        #expect(ids.count == 24_000)
        #expect(Set(ids).count == 24_000)
    }
}
