// SPDX-License-Identifier: GPL-2.0
/*
 * d2l test module: loading it makes the kernel print one real WARNING
 * (with its "---[ end trace ... ]---" line) and nothing else. Debian's
 * kernel has no lkdtm, so the verdict-cases recipe builds this instead.
 */
#include <linux/bug.h>
#include <linux/module.h>

static int __init d2l_warn_init(void)
{
	WARN(1, "d2l_warn: a kernel warning on purpose (d2l test case)\n");
	return 0;
}

static void __exit d2l_warn_exit(void)
{
}

module_init(d2l_warn_init);
module_exit(d2l_warn_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("d2l test: print one kernel WARNING when loaded");
