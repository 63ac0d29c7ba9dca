#include <ext2fs/ext2_fs.h>
#include <ext2fs/ext2fs.h>
#include <et/com_err.h>

// Swift 6 rejects direct use of mutable C globals; hand them out through functions.
static inline io_manager d2l_unix_io_manager(void) { return unix_io_manager; }

// Macros Swift cannot import.
static inline unsigned long long d2l_ext2_blocks_count(ext2_filsys fs) { return ext2fs_blocks_count(fs->super); }
static inline unsigned long long d2l_ext2_free_blocks_count(ext2_filsys fs) { return ext2fs_free_blocks_count(fs->super); }
static inline unsigned int d2l_ext2_block_size(ext2_filsys fs) { return fs->blocksize; }
static inline int d2l_ext2_inode_size(ext2_filsys fs) { return EXT2_INODE_SIZE(fs->super); }
// The time libext2fs stamps on what it writes (superblock, new inodes); 0 means "now".
static inline void d2l_ext2_set_now(ext2_filsys fs, long long t) { fs->now = (time_t)t; }

// What a directory's blocks must look like on this file system (feature tests are generated inline functions).
static inline int d2l_ext2_has_metadata_csum(ext2_filsys fs) { return ext2fs_has_feature_metadata_csum(fs->super); }
static inline int d2l_ext2_has_dir_index(ext2_filsys fs) { return ext2fs_has_feature_dir_index(fs->super); }
static inline int d2l_ext2_has_filetype(ext2_filsys fs) { return ext2fs_has_feature_filetype(fs->super); }
static inline int d2l_ext2_has_largedir(ext2_filsys fs) { return ext2fs_has_feature_largedir(fs->super); }
static inline int d2l_ext2_has_dir_nlink(ext2_filsys fs) { return ext2fs_has_feature_dir_nlink(fs->super); }
static inline int d2l_ext2_has_ea_inode(ext2_filsys fs) { return ext2fs_has_feature_ea_inode(fs->super); }
// The hash version a dx_root records (s_def_hash_version), and the one to compute names' hashes with:
// the same, made "unsigned" when the superblock says so (as e2fsck's rehash and the kernel do).
static inline int d2l_ext2_def_hash_version(ext2_filsys fs) { return fs->super->s_def_hash_version; }
static inline int d2l_ext2_hash_algorithm(ext2_filsys fs) {
    int v = fs->super->s_def_hash_version;
    if (v <= EXT2_HASH_TEA && (fs->super->s_flags & EXT2_FLAGS_UNSIGNED_HASH)) v += 3;
    return v;
}
static inline const __u32 *d2l_ext2_hash_seed(ext2_filsys fs) { return fs->super->s_hash_seed; }

#include <unistd.h>
#include <sys/syscall.h>
// sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE): start writeback of the file's dirty pages without
// waiting (glibc only declares it under _GNU_SOURCE).
static inline int d2l_start_writeback(int fd) { return (int)syscall(SYS_sync_file_range, fd, 0L, 0L, 2U); }
