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

#include <unistd.h>
#include <sys/syscall.h>
// sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE): start writeback of the file's dirty pages without
// waiting (glibc only declares it under _GNU_SOURCE).
static inline int d2l_start_writeback(int fd) { return (int)syscall(SYS_sync_file_range, fd, 0L, 0L, 2U); }
