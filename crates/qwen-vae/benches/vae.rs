fn main() {} // TEMP (lead): lets the workspace parse until the real bench lands
