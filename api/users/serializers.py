from rest_framework import serializers


class AdminLoginSerializer(serializers.Serializer):
    email = serializers.EmailField(max_length=254)
    password = serializers.CharField(max_length=128, trim_whitespace=False)


class TokenRefreshRequestSerializer(serializers.Serializer):
    refresh_token = serializers.CharField(max_length=4096)


class AdminUserSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    email = serializers.EmailField()
    username = serializers.CharField()
    is_staff = serializers.BooleanField()
    is_superuser = serializers.BooleanField()


class AdminLoginDataSerializer(serializers.Serializer):
    user_id = serializers.IntegerField()
    access_token = serializers.CharField()
    refresh_token = serializers.CharField()
    user = AdminUserSerializer()


class TokenRefreshDataSerializer(serializers.Serializer):
    access_token = serializers.CharField()
    refresh_token = serializers.CharField(help_text="The refresh token to use next; the one sent is revoked.")


class EmptyDataSerializer(serializers.Serializer):
    pass
