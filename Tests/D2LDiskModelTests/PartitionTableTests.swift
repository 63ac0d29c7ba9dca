import D2LSupport
import Foundation
import Testing
@testable import D2LDiskModel

/// A sparse scratch disk file removed at the end of the test.
final class ScratchDisk {
    let directory: String
    let path: String

    init(bytes: UInt64) throws {
        directory = NSTemporaryDirectory() + "d2l-model-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        path = directory + "/disk.img"
        _ = FileManager.default.createFile(atPath: path, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        try handle.truncate(atOffset: bytes)
        try handle.close()
    }

    deinit { try? FileManager.default.removeItem(atPath: directory) }
}

/// What sfdisk (util-linux), an independent reader, says about a disk.
struct SfdiskTable: Decodable {
    struct Table: Decodable {
        var label: String
        var id: String
        var partitions: [Entry]
    }
    struct Entry: Decodable {
        var start: UInt64
        var size: UInt64
        var type: String
        var uuid: String?
        var name: String?
        var attrs: String?
        var bootable: Bool?
    }
    var partitiontable: Table

    static func read(_ path: String) async throws -> Table {
        let output = try await ProcessRunner.run(["sfdisk", "--json", path])
        return try JSONDecoder().decode(SfdiskTable.self, from: Data(output.utf8)).partitiontable
    }
}

@Suite struct PartitionTableTests {
    static let sectors: UInt64 = 64 << 11  // 64 MiB

    static func layout(_ scheme: PartitionTable.Scheme) -> PartitionTable {
        let gpt = scheme == .gpt
        let boot = PartitionTable.Partition(
            number: 1, type: gpt ? .efiSystem : .fat16LBA, firstSector: 2048, sectorCount: 40 << 11, bootable: true,
            guid: GUID(seedHex: "11" + String(repeating: "ab", count: 15)), name: gpt ? "ESP" : "")
        let root = PartitionTable.Partition(
            number: 2, type: gpt ? .linuxRoot(.amd64) : .mbrLinux, firstSector: 2048 + (40 << 11),
            sectorCount: 20 << 11, guid: GUID(seedHex: String(repeating: "cd", count: 16)), name: gpt ? "root" : "")
        return PartitionTable(
            scheme: scheme, diskSectors: sectors, partitions: [boot, root], diskSignature: 0x1234_5678,
            diskGUID: GUID(seedHex: String(repeating: "5a", count: 16)))
    }

    @Test func mbrIsWrittenAndReadBack() async throws {
        let disk = try ScratchDisk(bytes: Self.sectors * 512)
        let table = Self.layout(.mbr)
        try table.write(toDisk: disk.path, bootCode: [UInt8](repeating: 0x90, count: 440))
        let read = try #require(try PartitionTable.read(path: disk.path))
        #expect(read.scheme == .mbr)
        #expect(read.diskSignature == 0x1234_5678)
        #expect(read.partitions.map(\.firstSector) == [2048, 2048 + (40 << 11)])
        #expect(read.partition(.boot)?.bootable == true)
        #expect(read.partition(.root)?.number == 2)
        let sfdisk = try await SfdiskTable.read(disk.path)
        #expect(sfdisk.label == "dos")
        #expect(sfdisk.id == "0x12345678")
        #expect(sfdisk.partitions.map(\.type) == ["e", "83"])
        #expect(sfdisk.partitions.map(\.start) == [2048, 2048 + (40 << 11)])
        #expect(sfdisk.partitions[0].bootable == true)
    }

    @Test func gptIsWrittenAndReadBackByUsAndBySfdisk() async throws {
        let disk = try ScratchDisk(bytes: Self.sectors * 512)
        let table = Self.layout(.gpt)
        try table.write(toDisk: disk.path, bootCode: [UInt8](repeating: 0x90, count: 440))
        let read = try #require(try PartitionTable.read(path: disk.path))
        #expect(read == table)
        #expect(read.partition(.boot)?.type.isEFISystemPartition == true)
        let sfdisk = try await SfdiskTable.read(disk.path)
        #expect(sfdisk.label == "gpt")
        #expect(sfdisk.id == table.diskGUID.description)
        #expect(sfdisk.partitions.map(\.type) == [
            "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
        ])
        #expect(sfdisk.partitions.map(\.start) == [2048, 2048 + (40 << 11)])
        #expect(sfdisk.partitions.map(\.size) == [40 << 11, 20 << 11])
        #expect(sfdisk.partitions.map(\.uuid) == table.partitions.map(\.guid.description))
        #expect(sfdisk.partitions.map(\.name) == ["ESP", "root"])
        #expect(sfdisk.partitions[0].attrs == "LegacyBIOSBootable")
        #expect(sfdisk.partitions[1].attrs == nil)
        // sfdisk --verify finds nothing wrong with the primary and backup headers.
        let verify = await ProcessRunner.capture(["sfdisk", "--verify", disk.path])
        #expect(verify.status == 0, "\(verify.stdout)\(verify.stderr)")
    }

    @Test func aCorruptGPTIsNotTakenForAnMBR() throws {
        let disk = try ScratchDisk(bytes: Self.sectors * 512)
        try Self.layout(.gpt).write(toDisk: disk.path, bootCode: [])
        let handle = try FileHandle(forUpdating: URL(fileURLWithPath: disk.path))
        try handle.seek(toOffset: 1024 + 100)  // inside the first partition entry
        handle.write(Data([0xFF]))
        try handle.close()
        #expect(throws: DiskModelError.self) { try PartitionTable.read(path: disk.path) }
    }

    @Test func guidTextRoundTripsThroughTheMixedEndianBytes() throws {
        let esp = try #require(GUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b"))
        #expect(esp.bytes == [0x28, 0x73, 0x2A, 0xC1, 0x1F, 0xF8, 0xD2, 0x11, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B])
        #expect(esp.description == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B")
        #expect(GUID("not a guid") == nil)
        let seeded = GUID(seedHex: "00112233445566778899aabbccddeeff")
        #expect(seeded.description == "00112233-4455-4677-8899-AABBCCDDEEFF")
        #expect(CRC32.checksum(Array("123456789".utf8)) == 0xCBF4_3926)
    }
}
