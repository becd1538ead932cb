/* The JNI half of JChain.java's `native` variant: JChain.nativeSpin spins in C. */
#include <jni.h>

JNIEXPORT jlong JNICALL Java_JChain_nativeSpin(JNIEnv *env, jclass cls, jlong n)
{
	(void)env;
	(void)cls;
	volatile unsigned long s = 0;
	for (jlong i = 0; i < n; i++)
		s += (unsigned long)(i * i) ^ (s >> 3);
	return (jlong)s;
}
